//! The names of rotated log files in a sandbox: the one contract between the task
//! logger, which renames `stdout` to `stdout.<n>`, and the shipper, which finds and
//! reads those files. Both sides parse names with this one function, so a name the
//! logger would never write (`stdout.0`, `stdout.007`, a number past the bound) is not
//! a rotation to either of them.
//!
//! The trade-off: the bound on `n` caps a task at a trillion rotations, which no task
//! reaches, in exchange for numbering that can never saturate: a stray
//! `stdout.18446744073709551615` once stopped the logger from rotating at all.

/// The highest rotation number either side accepts. Far below `u64::MAX`, so "one
/// past the highest found" always exists.
pub const MAX_ROTATION: u64 = 999_999_999_999;

/// The number `n` if `name` is `<stream>.<n>` with `n` written as the logger writes
/// it: decimal, no sign, no leading zero, 1 to [`MAX_ROTATION`].
pub fn rotation_number(name: &[u8], stream: &str) -> Option<u64> {
    let digits = name.strip_prefix(stream.as_bytes())?.strip_prefix(b".")?;
    let canonical = matches!(digits.first(), Some(b'1'..=b'9'))
        && digits.len() <= 12
        && digits.iter().all(u8::is_ascii_digit);
    if !canonical {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    (n <= MAX_ROTATION).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Regression (issue 14 review): the shipper read `stdout.007` and `stdout.0` as
    /// rotations the logger never writes, and a stray `stdout.<u64::MAX>` made the
    /// logger's next number saturate, so it never rotated again.
    #[test]
    fn only_names_the_logger_writes_are_rotations() {
        assert_eq!(rotation_number(b"stdout.1", "stdout"), Some(1));
        assert_eq!(rotation_number(b"stderr.12", "stderr"), Some(12));
        assert_eq!(
            rotation_number(b"stdout.999999999999", "stdout"),
            Some(MAX_ROTATION)
        );
        for bad in [
            &b"stdout"[..],
            b"stdout.",
            b"stdout.0",
            b"stdout.007",
            b"stdout.1a",
            b"stdout.+1",
            b"stdout.-1",
            b"stdout.1000000000000",
            b"stdout.18446744073709551615",
            b"stdout.99999999999999999999999",
            b"stderr.1",
            b"xstdout.1",
        ] {
            assert_eq!(
                rotation_number(bad, "stdout"),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    proptest! {
        #[test]
        fn every_number_the_logger_writes_reads_back(n in 1..=MAX_ROTATION) {
            let name = format!("stdout.{n}");
            prop_assert_eq!(rotation_number(name.as_bytes(), "stdout"), Some(n));
        }

        #[test]
        fn any_name_reads_as_its_canonical_spelling_or_not_at_all(s in "[0-9a-z.+-]{0,16}") {
            let name = format!("stdout.{s}");
            if let Some(n) = rotation_number(name.as_bytes(), "stdout") {
                prop_assert_eq!(n.to_string(), s);
            }
        }
    }
}
