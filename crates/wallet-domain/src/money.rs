//! Exact credit amounts.
//!
//! A credit amount is held as an integer count of ten-thousandths of a credit
//! ("units"): the API allows at most four fractional digits, so every valid
//! amount is an exact integer here. Storage keeps the same integer, which stays
//! inside ±2^53 so JavaScript-side SQLite and D1 bindings read it exactly.
//! Parsing never rounds: an amount that does not fit exactly is rejected.

use rust_decimal::Decimal;
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// Units per credit: four fractional digits.
pub const UNITS_PER_CREDIT: i64 = 10_000;
/// Largest integer JavaScript numbers carry exactly (2^53 - 1).
pub const MAX_SAFE_UNITS: i64 = 9_007_199_254_740_991;
/// Longest amount string accepted before parsing.
const MAX_AMOUNT_CHARS: usize = 32;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Credits(i64);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AmountError {
    /// Not of the form `digits[.digits]`: signs, exponents, spaces, NaN, empty.
    Malformed,
    /// More than four significant fractional digits.
    TooPrecise,
    /// Beyond what storage can hold exactly.
    TooLarge,
}

impl AmountError {
    pub fn message(self) -> &'static str {
        match self {
            AmountError::Malformed => {
                "must be a decimal string of digits with an optional fractional part, e.g. \"12.5\""
            }
            AmountError::TooPrecise => "must have at most 4 fractional digits",
            AmountError::TooLarge => "is too large",
        }
    }
}

impl Credits {
    pub const ZERO: Credits = Credits(0);

    pub const fn from_units(units: i64) -> Credits {
        Credits(units)
    }

    pub const fn whole(credits: i64) -> Credits {
        Credits(credits * UNITS_PER_CREDIT)
    }

    pub const fn units(self) -> i64 {
        self.0
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }

    pub fn is_positive(self) -> bool {
        self.0 > 0
    }

    /// Sum that stays inside the exactly-storable range.
    pub fn checked_add(self, other: Credits) -> Option<Credits> {
        self.0
            .checked_add(other.0)
            .filter(|v| v.abs() <= MAX_SAFE_UNITS)
            .map(Credits)
    }

    pub fn checked_sub(self, other: Credits) -> Option<Credits> {
        self.0
            .checked_sub(other.0)
            .filter(|v| v.abs() <= MAX_SAFE_UNITS)
            .map(Credits)
    }

    /// Sum capped at the largest storable amount, for totals of amounts that
    /// are each bounded far below it (held credits of one feature).
    pub fn saturating_add(self, other: Credits) -> Credits {
        self.checked_add(other).unwrap_or(Credits(MAX_SAFE_UNITS))
    }

    /// Difference floored at zero, for "remaining" figures shown to users.
    pub fn saturating_sub(self, other: Credits) -> Credits {
        Credits((self.0 - other.0).max(0))
    }

    pub fn to_decimal(self) -> Decimal {
        Decimal::new(self.0, 4).normalize()
    }

    /// Exact conversion from a decimal; rejects values needing more than four
    /// fractional digits instead of rounding them.
    pub fn from_decimal(value: Decimal) -> Result<Credits, AmountError> {
        let value = value.normalize();
        if value.scale() > 4 {
            return Err(AmountError::TooPrecise);
        }
        let scaled = value
            .checked_mul(Decimal::from(UNITS_PER_CREDIT))
            .ok_or(AmountError::TooLarge)?;
        let units: i64 = scaled.try_into().map_err(|_| AmountError::TooLarge)?;
        if units.abs() > MAX_SAFE_UNITS {
            return Err(AmountError::TooLarge);
        }
        Ok(Credits(units))
    }

    /// Parses an API amount: ASCII digits with an optional `.fraction`,
    /// nothing else. Zero parses; callers decide whether zero is allowed.
    pub fn parse(text: &str) -> Result<Credits, AmountError> {
        if text.is_empty() || text.len() > MAX_AMOUNT_CHARS {
            return Err(if text.is_empty() {
                AmountError::Malformed
            } else {
                AmountError::TooLarge
            });
        }
        let (whole, fraction) = match text.split_once('.') {
            Some((w, f)) => (w, Some(f)),
            None => (text, None),
        };
        let digits_only = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits_only(whole) || fraction.is_some_and(|f| !digits_only(f)) {
            return Err(AmountError::Malformed);
        }
        // Integer arithmetic on the digits themselves: a decimal type would
        // round what it cannot hold (29 significant digits) before we look.
        let fraction = fraction.unwrap_or("").trim_end_matches('0');
        if fraction.len() > 4 {
            return Err(AmountError::TooPrecise);
        }
        let whole = whole.trim_start_matches('0');
        // 2^53 units is 900,719,925,474 credits: twelve whole digits at most.
        if whole.len() > 12 {
            return Err(AmountError::TooLarge);
        }
        let number = |digits: &str| {
            digits
                .bytes()
                .fold(0i64, |n, b| n * 10 + i64::from(b - b'0'))
        };
        let fraction_units = number(fraction) * 10i64.pow(4 - fraction.len() as u32);
        let units = number(whole) * UNITS_PER_CREDIT + fraction_units;
        if units > MAX_SAFE_UNITS {
            return Err(AmountError::TooLarge);
        }
        Ok(Credits(units))
    }
}

impl fmt::Display for Credits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_decimal())
    }
}

impl Serialize for Credits {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Accepts only JSON strings: a JSON number may already have been rounded by
/// the sender's float parser, so it is refused rather than trusted.
impl<'de> Deserialize<'de> for Credits {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Credits, D::Error> {
        struct AmountVisitor;
        impl de::Visitor<'_> for AmountVisitor {
            type Value = Credits;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a decimal string such as \"12.5\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Credits, E> {
                Credits::parse(v).map_err(|e| E::custom(e.message()))
            }
        }
        deserializer.deserialize_str(AmountVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exact_amounts() {
        let cases = [
            ("0", 0),
            ("1", 10_000),
            ("12.5", 125_000),
            ("0.0035", 35),
            ("1.50000", 15_000),
            ("10000", 100_000_000),
            ("007", 70_000),
            ("1.000000000000000000000000000000", 10_000),
            ("000000000000000000000000000012.5", 125_000),
        ];
        for (text, units) in cases {
            assert_eq!(Credits::parse(text), Ok(Credits(units)), "{text}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        let cases = [
            ("", AmountError::Malformed),
            ("-1", AmountError::Malformed),
            ("+1", AmountError::Malformed),
            ("1e3", AmountError::Malformed),
            ("1E3", AmountError::Malformed),
            ("NaN", AmountError::Malformed),
            ("inf", AmountError::Malformed),
            (" 1", AmountError::Malformed),
            ("1 ", AmountError::Malformed),
            (".5", AmountError::Malformed),
            ("5.", AmountError::Malformed),
            ("1.2.3", AmountError::Malformed),
            ("1,5", AmountError::Malformed),
            ("1.00001", AmountError::TooPrecise),
            ("0.00001", AmountError::TooPrecise),
            ("99999999999999999999", AmountError::TooLarge),
            ("900719925474.0992", AmountError::TooLarge),
            // More digits than a 96-bit decimal holds: refused, never rounded.
            ("0.99999999999999999999999999999", AmountError::TooPrecise),
            ("1.00000000000000000000000000001", AmountError::TooPrecise),
            ("0.000000000000000000000000000001", AmountError::TooPrecise),
            ("1000000000000", AmountError::TooLarge),
        ];
        for (text, err) in cases {
            assert_eq!(Credits::parse(text), Err(err), "{text}");
        }
    }

    #[test]
    fn largest_storable_amount_round_trips() {
        let max = Credits::parse("900719925474.0991").unwrap();
        assert_eq!(max.units(), MAX_SAFE_UNITS);
        assert_eq!(max.to_string(), "900719925474.0991");
    }

    #[test]
    fn displays_without_trailing_zeros() {
        assert_eq!(Credits(2_000_000).to_string(), "200");
        assert_eq!(Credits(125_000).to_string(), "12.5");
        assert_eq!(Credits(35).to_string(), "0.0035");
        assert_eq!(Credits(0).to_string(), "0");
    }

    #[test]
    fn json_numbers_are_refused() {
        assert!(serde_json::from_str::<Credits>("5").is_err());
        assert!(serde_json::from_str::<Credits>("5.5").is_err());
        assert!(serde_json::from_str::<Credits>("null").is_err());
        assert_eq!(
            serde_json::from_str::<Credits>("\"5.5\"").unwrap(),
            Credits(55_000)
        );
    }

    #[test]
    fn arithmetic_stays_in_safe_range() {
        let max = Credits(MAX_SAFE_UNITS);
        assert_eq!(max.checked_add(Credits(1)), None);
        assert_eq!(Credits(5).checked_sub(Credits(7)), Some(Credits(-2)));
        assert_eq!(Credits(5).saturating_sub(Credits(7)), Credits::ZERO);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn display_then_parse_is_identity(units in 0i64..=MAX_SAFE_UNITS) {
                let c = Credits(units);
                prop_assert_eq!(Credits::parse(&c.to_string()), Ok(c));
            }
        }
    }
}
