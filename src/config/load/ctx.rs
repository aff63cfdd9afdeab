//! [`Ctx`]: one file's diagnostics, `${VAR}` expansion, and the checks every key shares.
//!
//! Each check takes the raw value with its location and the field path (`aggregations[0].field`)
//! it is reported under, and returns `None` after reporting what was expected.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use chrono_tz::Tz;
use serde_saphyr::{Location, Spanned};

use super::interpolate::{Env, InterpolationError, interpolate, interpolate_tracked, referenced_variables};
use super::raw::{ParseError, RawNumber, position};
use crate::config::{Diagnostic, UnsetVariable};

/// Longest identifier PostgreSQL keeps (`NAMEDATALEN - 1`).
pub(super) const MAX_IDENTIFIER_LEN: usize = 63;

/// Variables that hold a secret, each with the key that reads it (`sources.giosg.token`).
pub(super) type Secrets = BTreeMap<String, String>;

/// One file's diagnostics, and the checks every key shares.
///
/// No message shows a value that came from the environment: [`Ctx::shown`] names the variables
/// instead (`the value of ${GIOSG_BASE_URL}`), since any variable may hold a secret; and a
/// variable that holds one (see [`Secrets`]) may be used by no other key at all.
pub(super) struct Ctx<'a> {
    file: PathBuf,
    env: Env<'a>,
    /// Variables only credentials may use.
    secrets: Secrets,
    pub diagnostics: Vec<Diagnostic>,
}

impl<'a> Ctx<'a> {
    pub fn new(file: &Path, env: Env<'a>) -> Ctx<'a> {
        Ctx { file: file.to_path_buf(), env, secrets: Secrets::new(), diagnostics: Vec::new() }
    }

    /// With `secrets`, the variables only credentials may use.
    pub fn with_secrets(mut self, secrets: &Secrets) -> Ctx<'a> {
        self.secrets = secrets.clone();
        self
    }

    /// How a message shows `expanded`, the value written as `raw`: quoted when it is the file's
    /// own text; otherwise by the variables it came from, whose values may be secrets
    /// (`the value of ${GIOSG_TOKEN}`, `` `https://${HOST}/x` with the value of ${HOST} ``).
    pub fn shown(&self, raw: &str, expanded: &str) -> String {
        let used = match interpolate_tracked(raw, self.env) {
            Ok((_, used)) if !used.is_empty() => used,
            _ => return quoted(expanded),
        };
        let mut names: Vec<String> = Vec::new();
        for name in used {
            let name = format!("${{{name}}}");
            if !names.contains(&name) {
                names.push(name);
            }
        }
        let single = raw.trim().starts_with("${") && referenced_variables(raw).len() == 1 && raw.trim().ends_with('}');
        if single {
            format!("the value of {}", names.join(", "))
        } else {
            format!("{} with the value of {}", quoted(raw), names.join(", "))
        }
    }

    /// The variables whose values from the environment went into the expansion of `raw`, with
    /// those values.
    pub fn env_values(&self, raw: &str) -> Vec<(String, String)> {
        let used = interpolate_tracked(raw, self.env).map(|(_, used)| used).unwrap_or_default();
        used.into_iter().filter_map(|name| Some((name.clone(), (self.env)(&name)?))).collect()
    }

    /// Reports a use of a variable that holds a secret at `path`, which is not a credential; true
    /// when there is one.
    pub fn misused_secret(&mut self, path: &str, at: Location, raw: &str) -> bool {
        let misused = referenced_variables(raw).into_iter().find_map(|v| self.secrets.get(&v).map(|k| (v, k.clone())));
        let Some((variable, key)) = misused else { return false };
        // Anything but a credential is printed (`plan`, logs, errors, the run history).
        let message = format!(
            "uses `${{{variable}}}`, which holds a credential (it is read by `{key}`): only a source's `token` or \
             `password`, or `warehouse.url`, may use it, since other values are printed by plan, logs and errors"
        );
        self.error(at, path, message);
        true
    }

    /// Reports `message` about the value at `path` (`aggregations[0].field`) found at `at`.
    pub fn error(&mut self, at: Location, path: &str, message: impl fmt::Display) {
        let diagnostic = self.diagnostic(at, path, message);
        self.diagnostics.push(diagnostic);
    }

    /// `message` about the value at `path` found at `at`, not reported.
    pub fn diagnostic(&self, at: Location, path: &str, message: impl fmt::Display) -> Diagnostic {
        let (line, column) = position(at);
        let message = if path.is_empty() { message.to_string() } else { format!("{path}: {message}") };
        Diagnostic { file: self.file.clone(), line, column, message }
    }

    /// The text of a value needed only to contact a source (a token, a password): like
    /// [`Ctx::text`], except that when its only problems are unset variables they are returned,
    /// not reported, so that each command decides whether it needs them.
    /// Unless `secret`, a variable that holds a credential is refused too.
    pub fn deferrable(&mut self, path: &str, value: &Spanned<String>, secret: bool) -> Deferrable {
        if !secret && self.misused_secret(path, value.referenced, &value.value) {
            return Deferrable::Invalid;
        }
        match interpolate(&value.value, self.env) {
            Ok(text) => Deferrable::Text(text.into_owned()),
            Err(errors) if errors.iter().all(|e| matches!(e, InterpolationError::Missing(_))) => {
                let unset = errors
                    .iter()
                    .filter_map(|e| match e {
                        InterpolationError::Missing(variable) => Some(UnsetVariable {
                            variable: variable.clone(),
                            at: self.diagnostic(value.referenced, path, e),
                        }),
                        InterpolationError::Malformed(_) => None,
                    })
                    .collect();
                Deferrable::Unset(unset)
            }
            Err(errors) => {
                for error in errors {
                    self.error(value.referenced, path, error);
                }
                Deferrable::Invalid
            }
        }
    }

    /// Reports a problem that has a location but no field path (YAML syntax, serde).
    pub fn parse_error(&mut self, error: ParseError) {
        let ParseError { line, column, message } = error;
        self.diagnostics.push(Diagnostic { file: self.file.clone(), line, column, message });
    }

    /// The text of `value` with `${VAR}` expanded, or `None` after reporting why not.
    pub fn text(&mut self, path: &str, value: &Spanned<String>) -> Option<String> {
        self.expand(path, value.referenced, &value.value)
    }

    /// The text of `value` and how messages show it ([`Ctx::shown`]).
    pub fn text_shown(&mut self, path: &str, value: &Spanned<String>) -> Option<(String, String)> {
        let text = self.text(path, value)?;
        let shown = self.shown(&value.value, &text);
        Some((text, shown))
    }

    /// The text of a value that holds a secret itself (`warehouse.url`): like [`Ctx::text`],
    /// except that it may use the variables of other credentials.
    pub fn secret_text(&mut self, path: &str, value: &Spanned<String>) -> Option<String> {
        self.interpolate_at(path, value.referenced, &value.value)
    }

    /// `text` with `${VAR}` expanded, reporting each problem at `at`; a variable that holds a
    /// credential is refused.
    pub fn expand(&mut self, path: &str, at: Location, text: &str) -> Option<String> {
        if self.misused_secret(path, at, text) {
            return None;
        }
        self.interpolate_at(path, at, text)
    }

    fn interpolate_at(&mut self, path: &str, at: Location, text: &str) -> Option<String> {
        match interpolate(text, self.env) {
            Ok(expanded) => Some(expanded.into_owned()),
            Err(errors) => {
                for error in errors {
                    self.error(at, path, error);
                }
                None
            }
        }
    }

    /// A key the file must have: reports it missing at its mapping, `parent`.
    pub fn required<'v, T>(
        &mut self,
        parent: Location,
        path: &str,
        value: &'v Option<Spanned<T>>,
        expected: &str,
    ) -> Option<&'v Spanned<T>> {
        if value.is_none() {
            self.error(parent, path, format!("required key is missing (expected {expected})"));
        }
        value.as_ref()
    }

    /// The expanded text of `value`, which must not be blank.
    pub fn non_empty(&mut self, path: &str, value: &Spanned<String>, expected: &str) -> Option<String> {
        let text = self.text(path, value)?;
        if text.trim().is_empty() {
            self.error(value.referenced, path, format!("expected {expected}, found an empty value"));
            return None;
        }
        Some(text)
    }

    /// One of `options`, by name.
    pub fn choice<T: Copy>(
        &mut self,
        path: &str,
        value: &Spanned<String>,
        what: &str,
        options: &[(&str, T)],
    ) -> Option<T> {
        let (text, shown) = self.text_shown(path, value)?;
        if let Some((_, v)) = options.iter().find(|(name, _)| *name == text) {
            return Some(*v);
        }
        let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
        self.error(value.referenced, path, format!("unknown {what} {shown} (expected {})", one_of(&names)));
        None
    }

    /// An IANA time zone name.
    pub fn time_zone(&mut self, path: &str, value: &Spanned<String>) -> Option<Tz> {
        let (name, shown) = self.text_shown(path, value)?;
        match crate::time::parse_tz(name.trim()) {
            Ok(tz) => Some(tz),
            Err(e) => {
                self.error(value.referenced, path, e.replace(&format!("`{}`", name.trim()), &shown));
                None
            }
        }
    }

    /// A lowercase SQL identifier.
    pub fn identifier(&mut self, path: &str, value: &Spanned<String>) -> Option<String> {
        let (text, shown) = self.text_shown(path, value)?;
        if let Some(problem) = identifier_problem(&text, &shown) {
            self.error(value.referenced, path, problem);
            return None;
        }
        Some(text)
    }

    /// A whole number in `min..=max`, or `default` when the key is absent.
    pub fn integer(
        &mut self,
        path: &str,
        value: Option<&Spanned<RawNumber>>,
        min: u64,
        max: u64,
        default: u64,
    ) -> Option<u64> {
        let Some(value) = value else { return Some(default) };
        let (n, shown): (Option<i128>, String) = match &value.value {
            RawNumber::Int(n) => (Some(*n), format!("`{n}`")),
            RawNumber::Float(f) => ((f.fract() == 0.0 && f.abs() < 1e30).then_some(*f as i128), format!("`{f}`")),
            RawNumber::Text(raw) => {
                let text = self.expand(path, value.referenced, raw)?;
                (text.trim().parse().ok(), self.shown(raw, &text))
            }
        };
        match n.map(u64::try_from) {
            Some(Ok(n)) if (min..=max).contains(&n) => Some(n),
            _ => {
                let expected = if max == u64::from(u32::MAX) {
                    format!("a whole number of at least {min}")
                } else {
                    format!("a whole number from {min} to {max}")
                };
                self.error(value.referenced, path, format!("expected {expected}, found {shown}"));
                None
            }
        }
    }

    /// A finite number greater than zero, or `default` when the key is absent.
    pub fn positive(&mut self, path: &str, value: Option<&Spanned<RawNumber>>, default: f64) -> Option<f64> {
        let Some(value) = value else { return Some(default) };
        let (n, shown): (Option<f64>, String) = match &value.value {
            RawNumber::Int(n) => (Some(*n as f64), format!("`{n}`")),
            RawNumber::Float(f) => (Some(*f), format!("`{f}`")),
            RawNumber::Text(raw) => {
                let text = self.expand(path, value.referenced, raw)?;
                (text.trim().parse().ok(), self.shown(raw, &text))
            }
        };
        match n {
            Some(n) if n.is_finite() && n > 0.0 => Some(n),
            _ => {
                self.error(value.referenced, path, format!("expected a number greater than 0, found {shown}"));
                None
            }
        }
    }
}

/// What [`Ctx::deferrable`] found.
pub(super) enum Deferrable {
    /// Every variable was set.
    Text(String),
    /// These variables are unset (nothing else is wrong).
    Unset(Vec<UnsetVariable>),
    /// Another problem, already reported.
    Invalid,
}

/// Why `s` is not a lowercase SQL identifier, if it is not; `shown` is how the message shows it.
pub(super) fn identifier_problem(s: &str, shown: &str) -> Option<String> {
    let mut chars = s.chars();
    let ok = matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_lowercase())
        && chars.all(|c| c == '_' || c.is_ascii_lowercase() || c.is_ascii_digit());
    if ok && s.len() <= MAX_IDENTIFIER_LEN {
        return None;
    }
    Some(format!(
        "{shown} is not a valid identifier (expected lowercase letters, digits and `_`, not starting with a digit, \
         at most {MAX_IDENTIFIER_LEN} characters)"
    ))
}

/// Longest value a message quotes whole; a longer one is cut.
const MAX_QUOTED_CHARS: usize = 100;

/// `` `s` `` for a message: control characters escaped (a value cannot rewrite the terminal or
/// add a line to the report) and a long value cut after [`MAX_QUOTED_CHARS`] characters.
pub(super) fn quoted(s: &str) -> String {
    let escaped = escape_controls(&s.chars().take(MAX_QUOTED_CHARS).collect::<String>());
    let more = s.chars().nth(MAX_QUOTED_CHARS).is_some();
    if more { format!("`{escaped}…` ({} characters)", s.chars().count()) } else { format!("`{escaped}`") }
}

/// `s` with its control characters escaped (`\n`, `\u{1b}`), the rest as it is.
pub(super) fn escape_controls(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

/// `a`, `a or b`, `a, b or c`.
pub(super) fn one_of(names: &[&str]) -> String {
    match names {
        [] => "nothing".to_string(),
        [one] => (*one).to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}
