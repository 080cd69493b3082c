//! Credit amounts at their edges: the longest string read, the largest
//! amount storage keeps exactly, and what a client is told when an amount
//! is refused.

use rust_decimal::Decimal;
use wallet_domain::money::{AmountError, MAX_SAFE_UNITS};
use wallet_domain::Credits;

#[test]
fn an_amount_string_of_32_characters_is_read_and_33_refused() {
    let longest = format!("{}1", "0".repeat(31));
    assert_eq!(Credits::parse(&longest), Ok(Credits::whole(1)));
    let too_long = format!("{}1", "0".repeat(32));
    assert_eq!(Credits::parse(&too_long), Err(AmountError::TooLarge));
    assert_eq!(Credits::parse(""), Err(AmountError::Malformed));
}

#[test]
fn a_decimal_converts_exactly_up_to_the_largest_storable_amount() {
    let largest = Decimal::new(MAX_SAFE_UNITS, 4);
    assert_eq!(
        Credits::from_decimal(largest),
        Ok(Credits::from_units(MAX_SAFE_UNITS))
    );
    assert_eq!(
        Credits::from_decimal(-largest),
        Ok(Credits::from_units(-MAX_SAFE_UNITS))
    );
    let beyond = Decimal::new(MAX_SAFE_UNITS + 1, 4);
    assert_eq!(Credits::from_decimal(beyond), Err(AmountError::TooLarge));
    assert_eq!(
        Credits::from_decimal(Decimal::new(1, 5)),
        Err(AmountError::TooPrecise)
    );
}

#[test]
fn a_refused_amount_tells_the_client_what_is_expected() {
    assert_eq!(
        AmountError::Malformed.message(),
        "must be a decimal string of digits with an optional fractional part, e.g. \"12.5\""
    );
    assert_eq!(
        AmountError::TooPrecise.message(),
        "must have at most 4 fractional digits"
    );
    assert_eq!(AmountError::TooLarge.message(), "is too large");
    // Through JSON: a number is refused saying what is expected, a bad
    // string with the rule it broke.
    let number = serde_json::from_str::<Credits>("5")
        .unwrap_err()
        .to_string();
    assert!(
        number.contains("expected a decimal string such as \"12.5\""),
        "{number}"
    );
    let precise = serde_json::from_str::<Credits>(r#""1.00001""#)
        .unwrap_err()
        .to_string();
    assert!(precise.contains("at most 4 fractional digits"), "{precise}");
}
