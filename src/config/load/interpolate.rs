//! `${VAR}` and `${VAR:-default}` in string values of the config and job files.
//!
//! Owns: the expansion of one string against an environment lookup. It runs on values after the
//! YAML is parsed (plain and quoted scalars alike), so a value from the environment can never
//! change the structure of the file, and every missing variable of a file is reported at once.
//!
//! Rules: `NAME` is `[A-Za-z_][A-Za-z0-9_]*`; a variable set to the empty string counts as set
//! (so `${VAR:-default}` gives `""` when `VAR=""`); the default is the text up to the `}` that
//! closes the reference, and may itself hold references (`${A:-${B:-x}}`: A, else B, else `x`),
//! expanded only when the default is used, since the file's author wrote them; values taken from
//! the environment are never expanded again; a `$` not followed by `{` is literal.

use std::borrow::Cow;
use std::fmt;

/// Looks a variable up: `Some` when set (possibly to `""`), `None` when unset.
pub(super) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Why a string could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum InterpolationError {
    /// `${NAME}` without a default, and `NAME` is unset.
    Missing(String),
    /// `${` that is not `${NAME}` or `${NAME:-default}` (the text is the reference as written).
    Malformed(String),
}

impl fmt::Display for InterpolationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InterpolationError::Missing(name) => write!(
                f,
                "environment variable `{name}` is not set (set it, or give a default with `${{{name}:-default}}`)"
            ),
            InterpolationError::Malformed(text) => {
                write!(f, "malformed variable reference `{text}` (expected `${{NAME}}` or `${{NAME:-default}}`)")
            }
        }
    }
}

/// Expands every `${…}` of `s`, or returns every problem found in it.
pub(super) fn interpolate<'s>(s: &'s str, env: Env<'_>) -> Result<Cow<'s, str>, Vec<InterpolationError>> {
    interpolate_tracked(s, env).map(|(text, _)| text)
}

/// [`interpolate`], with the variables whose values from the environment went into the text, in
/// order (defaults written in the file do not count): a message about the value must name them
/// rather than show it.
pub(super) fn interpolate_tracked<'s>(
    s: &'s str,
    env: Env<'_>,
) -> Result<(Cow<'s, str>, Vec<String>), Vec<InterpolationError>> {
    if !s.contains("${") {
        return Ok((Cow::Borrowed(s), Vec::new()));
    }
    let mut out = String::with_capacity(s.len());
    let mut errors = Vec::new();
    let mut used = Vec::new();
    expand_into(s, env, &mut out, &mut errors, &mut used);
    if errors.is_empty() { Ok((Cow::Owned(out), used)) } else { Err(errors) }
}

/// The variables `${NAME}` and `${NAME:-default}` in `text` as written (nested defaults too), in
/// order, whether set or not.
pub(super) fn referenced_variables(text: &str) -> Vec<String> {
    text.split("${")
        .skip(1)
        .map(|rest| rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>())
        .filter(|name| !name.is_empty())
        .collect()
}

/// Appends `s` expanded to `out`, pushing each problem onto `errors` and each variable whose
/// value was used onto `used`.
fn expand_into(s: &str, env: Env<'_>, out: &mut String, errors: &mut Vec<InterpolationError>, used: &mut Vec<String>) {
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(close) = closing_brace(after) else {
            errors.push(InterpolationError::Malformed(rest[start..].to_string()));
            return;
        };
        let body = &after[..close];
        let (name, default) = match body.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (body, None),
        };
        if is_var_name(name) {
            match (env(name), default) {
                (Some(value), _) => {
                    out.push_str(&value);
                    used.push(name.to_string());
                }
                (None, Some(default)) => expand_into(default, env, out, errors, used),
                (None, None) => errors.push(InterpolationError::Missing(name.to_string())),
            }
        } else {
            errors.push(InterpolationError::Malformed(format!("${{{body}}}")));
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
}

/// The index of the `}` that closes a reference whose body starts `text`: the first one not
/// closing a `${` nested in it.
fn closing_brace(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("db.example".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn expand(s: &str) -> Result<String, Vec<InterpolationError>> {
        interpolate(s, &env).map(Cow::into_owned)
    }

    #[test]
    fn config_interpolation_expands_set_variables_and_defaults() {
        assert_eq!(expand("postgres://${HOST}:5432/x").unwrap(), "postgres://db.example:5432/x");
        assert_eq!(expand("${UNSET_X:-https://api.giosg.com}").unwrap(), "https://api.giosg.com");
        assert_eq!(expand("${HOST:-other}").unwrap(), "db.example");
        assert_eq!(expand("${UNSET_X:-}").unwrap(), "");
        assert_eq!(expand("price $5 and $HOST").unwrap(), "price $5 and $HOST");
    }

    #[test]
    fn config_interpolation_counts_an_empty_value_as_set() {
        assert_eq!(expand("[${EMPTY}]").unwrap(), "[]");
        assert_eq!(expand("[${EMPTY:-default}]").unwrap(), "[]");
    }

    #[test]
    fn config_interpolation_reports_every_problem_of_a_string() {
        let errors = expand("${A_MISSING}/${HOST}/${B_MISSING}/${9bad}/${open").unwrap_err();
        assert_eq!(
            errors,
            vec![
                InterpolationError::Missing("A_MISSING".into()),
                InterpolationError::Missing("B_MISSING".into()),
                InterpolationError::Malformed("${9bad}".into()),
                InterpolationError::Malformed("${open".into()),
            ]
        );
        assert!(errors[0].to_string().contains("`A_MISSING` is not set"), "{}", errors[0]);
    }

    #[test]
    fn config_interpolation_expands_references_in_a_default_only_when_it_is_used() {
        assert_eq!(expand("${UNSET_X:-${HOST}}/x").unwrap(), "db.example/x");
        assert_eq!(expand("${UNSET_X:-${UNSET_Y:-https://service.giosg.com}}").unwrap(), "https://service.giosg.com");
        assert_eq!(expand("${HOST:-${UNSET_Y}}").unwrap(), "db.example", "an unused default is not expanded");
        assert_eq!(expand("${UNSET_X:-${UNSET_Y}}").unwrap_err(), vec![InterpolationError::Missing("UNSET_Y".into())]);
        assert_eq!(expand("${UNSET_X:-a}}").unwrap(), "a}", "a `}}` after the reference is literal");
        assert_eq!(
            expand("${UNSET_X:-${HOST}").unwrap_err(),
            vec![InterpolationError::Malformed("${UNSET_X:-${HOST}".into())]
        );
    }

    #[test]
    fn config_interpolation_tells_which_variables_gave_the_text() {
        let used = |s: &str| interpolate_tracked(s, &env).unwrap().1;
        assert_eq!(used("https://${HOST}/${EMPTY}"), ["HOST", "EMPTY"]);
        assert!(used("${UNSET_X:-https://x}").is_empty(), "a default is the file's own text");
        assert_eq!(used("${UNSET_X:-${HOST}}"), ["HOST"]);
        assert_eq!(referenced_variables("${A:-${B}}/${C}"), ["A", "B", "C"]);
    }

    #[test]
    fn config_interpolation_does_not_expand_values_again() {
        let env = |name: &str| (name == "INNER").then(|| "${HOST}".to_string());
        assert_eq!(interpolate("${INNER}", &env).unwrap(), "${HOST}");
    }
}
