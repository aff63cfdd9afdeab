//! What kind of failure a load error is, and whether retrying can help.
//!
//! Owns: [`ErrorKind`], the one classification every layer's typed error maps to (a source's
//! `FetchError`, a sink's `SinkError`, the runner's `LoadError`), and what follows from it: whether
//! a retry can help, the exit code of `chatetl run`/`backfill`, and the name stored in the run
//! history and shown by `status` and `/metrics`. It sits below every other module.

use serde::{Deserialize, Serialize};

/// Whose fault a failure is, and so what to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The configuration or a job definition cannot work (fix the files).
    Configuration,
    /// The upstream refused the credentials: 401 or 403 (fix the token or password).
    Credentials,
    /// The upstream refused the request: another 4xx (a job definition the API does not take).
    BadRequest,
    /// The upstream could not answer: 429, 5xx, timeouts, connection errors, after retries.
    UpstreamUnavailable,
    /// The upstream answered 2xx with something chatetl cannot read.
    BadResponse,
    /// The warehouse failed: connection, statement, disk.
    Warehouse,
}

impl ErrorKind {
    /// Every kind, in the order [`ErrorKind::exit_code`] ranks them.
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::Credentials,
        ErrorKind::Configuration,
        ErrorKind::BadRequest,
        ErrorKind::BadResponse,
        ErrorKind::Warehouse,
        ErrorKind::UpstreamUnavailable,
    ];

    /// Its name in the run history, `status --json` and the `kind` label of `/metrics`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Configuration => "configuration",
            ErrorKind::Credentials => "credentials",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::UpstreamUnavailable => "upstream_unavailable",
            ErrorKind::BadResponse => "bad_response",
            ErrorKind::Warehouse => "warehouse",
        }
    }

    /// The kind named `name` (as stored by [`ErrorKind::as_str`]).
    pub fn parse(name: &str) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Whether running again later may succeed without changing anything: an upstream outage
    /// or a warehouse failure may pass; refused credentials, a refused request, an unreadable
    /// answer or a broken configuration will not.
    pub fn retryable(self) -> bool {
        match self {
            ErrorKind::UpstreamUnavailable | ErrorKind::Warehouse => true,
            ErrorKind::Configuration | ErrorKind::Credentials | ErrorKind::BadRequest | ErrorKind::BadResponse => false,
        }
    }

    /// The exit code of a run that failed with this kind (the README's exit codes): 1 when
    /// running again later may succeed (an outage, the warehouse), 2 for the configuration, 3
    /// for refused credentials, 4 for a request the upstream refuses or an answer chatetl cannot
    /// read.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::UpstreamUnavailable | ErrorKind::Warehouse => 1,
            ErrorKind::Configuration => 2,
            ErrorKind::Credentials => 3,
            ErrorKind::BadRequest | ErrorKind::BadResponse => 4,
        }
    }

    /// The kind that decides a run's exit code when several failed: the first of
    /// [`ErrorKind::ALL`] among them (credentials first: nothing works until they are fixed).
    pub fn most_urgent(kinds: impl IntoIterator<Item = ErrorKind>) -> Option<ErrorKind> {
        let kinds: Vec<ErrorKind> = kinds.into_iter().collect();
        ErrorKind::ALL.into_iter().find(|k| kinds.contains(k))
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_exit_codes_tell_auth_from_outages() {
        for k in ErrorKind::ALL {
            assert_eq!(ErrorKind::parse(k.as_str()), Some(k));
        }
        assert_ne!(ErrorKind::Credentials.exit_code(), ErrorKind::UpstreamUnavailable.exit_code());
        assert!(!ErrorKind::Credentials.retryable() && ErrorKind::UpstreamUnavailable.retryable());
        let urgent = ErrorKind::most_urgent([ErrorKind::UpstreamUnavailable, ErrorKind::Credentials]);
        assert_eq!(urgent, Some(ErrorKind::Credentials));
        assert_eq!(ErrorKind::most_urgent([]), None);
    }
}
