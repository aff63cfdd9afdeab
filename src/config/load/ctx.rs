//! [`Ctx`]: one file's diagnostics, `${VAR}` expansion, and the checks every key shares.
//!
//! Each check takes the raw value with its location and the field path (`aggregations[0].field`)
//! it is reported under, and returns `None` after reporting what was expected.

use std::fmt;
use std::path::{Path, PathBuf};

use chrono_tz::Tz;
use serde_saphyr::{Location, Spanned};

use super::interpolate::{Env, InterpolationError, interpolate};
use super::raw::{ParseError, RawNumber, position};
use crate::config::{Diagnostic, UnsetVariable};

/// Longest identifier PostgreSQL keeps (`NAMEDATALEN - 1`).
pub(super) const MAX_IDENTIFIER_LEN: usize = 63;

/// One file's diagnostics, and the checks every key shares.
pub(super) struct Ctx<'a> {
    file: PathBuf,
    env: Env<'a>,
    pub diagnostics: Vec<Diagnostic>,
}

impl<'a> Ctx<'a> {
    pub fn new(file: &Path, env: Env<'a>) -> Ctx<'a> {
        Ctx { file: file.to_path_buf(), env, diagnostics: Vec::new() }
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
    pub fn deferrable(&mut self, path: &str, value: &Spanned<String>) -> Deferrable {
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

    /// `text` with `${VAR}` expanded, reporting each problem at `at`.
    pub fn expand(&mut self, path: &str, at: Location, text: &str) -> Option<String> {
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
        let text = self.text(path, value)?;
        if let Some((_, v)) = options.iter().find(|(name, _)| *name == text) {
            return Some(*v);
        }
        let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
        self.error(value.referenced, path, format!("unknown {what} `{text}` (expected {})", one_of(&names)));
        None
    }

    /// An IANA time zone name.
    pub fn time_zone(&mut self, path: &str, value: &Spanned<String>) -> Option<Tz> {
        let name = self.text(path, value)?;
        match crate::time::parse_tz(name.trim()) {
            Ok(tz) => Some(tz),
            Err(e) => {
                self.error(value.referenced, path, e);
                None
            }
        }
    }

    /// A lowercase SQL identifier.
    pub fn identifier(&mut self, path: &str, value: &Spanned<String>) -> Option<String> {
        let text = self.text(path, value)?;
        if let Some(problem) = identifier_problem(&text) {
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
            RawNumber::Int(n) => (Some(*n), n.to_string()),
            RawNumber::Float(f) => ((f.fract() == 0.0 && f.abs() < 1e30).then_some(*f as i128), f.to_string()),
            RawNumber::Text(text) => {
                let text = self.expand(path, value.referenced, text)?;
                (text.trim().parse().ok(), text)
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
                self.error(value.referenced, path, format!("expected {expected}, found `{shown}`"));
                None
            }
        }
    }

    /// A finite number greater than zero, or `default` when the key is absent.
    pub fn positive(&mut self, path: &str, value: Option<&Spanned<RawNumber>>, default: f64) -> Option<f64> {
        let Some(value) = value else { return Some(default) };
        let (n, shown): (Option<f64>, String) = match &value.value {
            RawNumber::Int(n) => (Some(*n as f64), n.to_string()),
            RawNumber::Float(f) => (Some(*f), f.to_string()),
            RawNumber::Text(text) => {
                let text = self.expand(path, value.referenced, text)?;
                (text.trim().parse().ok(), text)
            }
        };
        match n {
            Some(n) if n.is_finite() && n > 0.0 => Some(n),
            _ => {
                self.error(value.referenced, path, format!("expected a number greater than 0, found `{shown}`"));
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

/// Why `s` is not a lowercase SQL identifier, if it is not.
pub(super) fn identifier_problem(s: &str) -> Option<String> {
    let mut chars = s.chars();
    let ok = matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_lowercase())
        && chars.all(|c| c == '_' || c.is_ascii_lowercase() || c.is_ascii_digit());
    if ok && s.len() <= MAX_IDENTIFIER_LEN {
        return None;
    }
    Some(format!(
        "`{s}` is not a valid identifier (expected lowercase letters, digits and `_`, not starting with a digit, \
         at most {MAX_IDENTIFIER_LEN} characters)"
    ))
}

/// `a`, `a or b`, `a, b or c`.
pub(super) fn one_of(names: &[&str]) -> String {
    match names {
        [] => "nothing".to_string(),
        [one] => (*one).to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}
