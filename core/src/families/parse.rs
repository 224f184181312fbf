//! Reading command arguments as Redis reads them: integers and floats in
//! Redis's strict forms, and the expiry options `SET` and `GETEX` share.

use crate::errors::ExecError;

/// The largest string a command may build (`APPEND`, `SETRANGE`): Redis's
/// `proto-max-bulk-len` default.
pub const MAX_STRING: usize = 512 * 1024 * 1024;

/// A 64-bit integer in Redis's strict form (`string2ll`): an optional `-`,
/// digits without leading zeros (bar `0` itself), nothing else.
pub fn int(arg: &[u8]) -> Option<i64> {
    let (neg, digits) = match arg {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, arg),
    };
    if digits.is_empty() || digits.len() > 19 || (digits[0] == b'0' && arg.len() > 1) {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        let v = i64::from(d - b'0');
        n = n.checked_mul(10)?;
        n = if neg {
            n.checked_sub(v)?
        } else {
            n.checked_add(v)?
        };
    }
    Some(n)
}

/// [`int`], or Redis's "not an integer" error.
pub fn int_arg(arg: &[u8]) -> Result<i64, ExecError> {
    int(arg).ok_or(ExecError::NotInteger)
}

/// A float as Redis reads one (`strtold` on the whole argument): no spaces,
/// no NaN.
pub fn float(arg: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(arg).ok()?;
    if s.is_empty()
        || s.starts_with(|c: char| c.is_whitespace())
        || s.ends_with(char::is_whitespace)
    {
        return None;
    }
    let v: f64 = s.parse().ok()?;
    (!v.is_nan()).then_some(v)
}

/// A float reply as Redis writes it for humans: the shortest text that
/// reads back to the same value, never in exponent form, and no `-0`.
pub fn format_float(v: f64) -> String {
    let v = if v == 0.0 { 0.0 } else { v };
    format!("{v}")
}

/// When a key set with options expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// No option: the key does not expire (`SET` clears any deadline).
    None,
    /// `KEEPTTL`: the key keeps the deadline it had.
    Keep,
    /// `PERSIST` (`GETEX`): the deadline is removed.
    Persist,
    /// An absolute deadline, unix milliseconds (may be in the past).
    At(i64),
}

/// The unit and base of an expire argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeArg {
    /// Seconds from now (`EX`, `EXPIRE`).
    Secs,
    /// Milliseconds from now (`PX`, `PEXPIRE`).
    Millis,
    /// A unix time in seconds (`EXAT`, `EXPIREAT`).
    UnixSecs,
    /// A unix time in milliseconds (`PXAT`, `PEXPIREAT`).
    UnixMillis,
}

impl TimeArg {
    /// The option word of `SET`/`GETEX` for this unit.
    pub fn from_option(word: &[u8]) -> Option<TimeArg> {
        [
            (&b"ex"[..], TimeArg::Secs),
            (b"px", TimeArg::Millis),
            (b"exat", TimeArg::UnixSecs),
            (b"pxat", TimeArg::UnixMillis),
        ]
        .into_iter()
        .find(|(w, _)| w.eq_ignore_ascii_case(word))
        .map(|(_, t)| t)
    }

    /// The absolute deadline in unix milliseconds that `value` of this unit
    /// means at `now`, with Redis's overflow checks; `positive` also
    /// refuses values not above zero (`SET`, `GETEX`; `EXPIRE` allows them
    /// and deletes the key). Errors name `command`.
    pub fn deadline(
        self,
        value: &[u8],
        now: u64,
        positive: bool,
        command: &'static str,
    ) -> Result<i64, ExecError> {
        let when = int_arg(value)?;
        let invalid = ExecError::InvalidExpire(command);
        if positive && when <= 0 {
            return Err(invalid);
        }
        let millis = match self {
            TimeArg::Secs | TimeArg::UnixSecs => when.checked_mul(1000).ok_or(invalid.clone())?,
            TimeArg::Millis | TimeArg::UnixMillis => when,
        };
        match self {
            TimeArg::Secs | TimeArg::Millis => {
                let base = i64::try_from(now).unwrap_or(i64::MAX);
                millis.checked_add(base).ok_or(invalid)
            }
            TimeArg::UnixSecs | TimeArg::UnixMillis => Ok(millis),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_read_strictly() {
        assert_eq!(int(b"0"), Some(0));
        assert_eq!(int(b"-12"), Some(-12));
        assert_eq!(int(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(int(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            &b""[..],
            b"-",
            b"+1",
            b" 1",
            b"1 ",
            b"01",
            b"-0x",
            b"9223372036854775808",
            b"1.0",
        ] {
            assert_eq!(int(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn floats_refuse_spaces_and_nan() {
        assert_eq!(float(b"1.5"), Some(1.5));
        assert_eq!(float(b"-inf"), Some(f64::NEG_INFINITY));
        for bad in [&b""[..], b" 1", b"1 ", b"nan", b"1\x002", b"abc"] {
            assert_eq!(float(bad), None, "{bad:?}");
        }
        assert_eq!(format_float(-0.0), "0");
        assert_eq!(format_float(10.5 + 0.1), "10.6");
        assert_eq!(format_float(3.0), "3");
    }

    #[test]
    fn expire_times_overflow_into_errors() {
        let now = 1_700_000_000_000;
        assert_eq!(
            TimeArg::Secs.deadline(b"10", now, true, "set"),
            Ok(now as i64 + 10_000)
        );
        assert!(TimeArg::Secs.deadline(b"0", now, true, "set").is_err());
        assert_eq!(
            TimeArg::Secs.deadline(b"-1", now, false, "expire"),
            Ok(now as i64 - 1000)
        );
        assert!(TimeArg::Secs
            .deadline(b"9223372036854776", now, false, "expire")
            .is_err());
        assert!(TimeArg::Millis
            .deadline(b"9223372036854770000", now, false, "pexpire")
            .is_err());
        assert_eq!(
            TimeArg::UnixMillis.deadline(b"9223372036854770000", now, false, "pexpireat"),
            Ok(9_223_372_036_854_770_000)
        );
    }
}
