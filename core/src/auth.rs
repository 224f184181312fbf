//! Password authentication (`--requirepass`), the same way at the server and
//! at the proxy: until a connection sends the right `AUTH`, it may only run
//! `AUTH`, `PING`, `QUIT` and `HELP`.

use crate::errors::ExecError;
use crate::reply::Reply;
use bytes::Bytes;

/// A configured password. Its `Debug` output never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(Bytes);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(…)")
    }
}

impl Password {
    /// Wraps a password.
    pub fn new(p: impl Into<Bytes>) -> Self {
        Password(p.into())
    }

    /// The password itself, for a proxy that sends it upstream.
    pub fn expose(&self) -> &Bytes {
        &self.0
    }

    /// Compares in time that depends only on the lengths, not on where the
    /// first difference is, so the password cannot be guessed byte by byte
    /// from response times.
    pub fn matches(&self, given: &[u8]) -> bool {
        let expected = &self.0[..];
        let mut diff = u8::from(expected.len() != given.len());
        for (i, e) in expected.iter().enumerate() {
            // A short guess compares its missing bytes as zeros, so the
            // loop always runs over the whole password.
            diff |= e ^ given.get(i).copied().unwrap_or(0);
        }
        diff == 0
    }
}

/// Checks an `AUTH`; returns the reply and whether the connection is now
/// authenticated.
pub fn check(password: Option<&Password>, given: &[u8], other_user: bool) -> (Reply, bool) {
    match password {
        None => (ExecError::NoPasswordConfigured.into(), true),
        Some(p) if !other_user && p.matches(given) => (Reply::ok(), true),
        Some(_) => (ExecError::WrongPass.into(), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_only_the_exact_password() {
        let p = Password::new(Bytes::from_static(b"s3cret"));
        assert!(p.matches(b"s3cret"));
        for wrong in [&b""[..], b"s3cre", b"s3cret!", b"S3cret", b"x3cret"] {
            assert!(!p.matches(wrong), "{wrong:?}");
        }
        assert_eq!(format!("{p:?}"), "Password(…)");
    }

    #[test]
    fn auth_replies() {
        let p = Password::new(Bytes::from_static(b"pw"));
        assert_eq!(check(Some(&p), b"pw", false), (Reply::ok(), true));
        assert!(
            matches!(check(Some(&p), b"no", false), (Reply::Error(e), false) if e.starts_with(b"WRONGPASS"))
        );
        assert!(matches!(
            check(Some(&p), b"pw", true),
            (Reply::Error(_), false)
        ));
        assert!(matches!(check(None, b"pw", false), (Reply::Error(_), true)));
    }
}
