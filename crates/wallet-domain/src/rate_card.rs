//! The rate card: what a model's tokens cost, effective-dated, and the exact
//! price of a call's usage.
//!
//! Rates are credit amounts per million tokens (and a per-call fee). A price
//! is computed in integer arithmetic on 1/10,000 credit (`i128`, so no count
//! or rate the configuration allows can overflow) and rounded **up** once
//! per call, so a bill is never below what the rate card says and never
//! carries floating-point noise.

use crate::money::{Credits, UNITS_PER_CREDIT};
use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::{Deserialize, Serialize};

/// The development default: three models, one with a price change scheduled.
pub const DEFAULT_RATE_CARD: &str = r#"[
 {"model":"gpt-4o","input_per_million":"250","cached_input_per_million":"125","output_per_million":"1000","per_request":"0","effective_from":"2024-01-01T00:00:00Z"},
 {"model":"gpt-4o-mini","input_per_million":"15","cached_input_per_million":"7.5","output_per_million":"60","per_request":"0","effective_from":"2024-01-01T00:00:00Z"},
 {"model":"claude-sonnet-4","input_per_million":"300","cached_input_per_million":"30","output_per_million":"1500","per_request":"0.01","effective_from":"2024-01-01T00:00:00Z"},
 {"model":"claude-sonnet-4","input_per_million":"250","cached_input_per_million":"25","output_per_million":"1250","per_request":"0.01","effective_from":"2030-01-01T00:00:00Z"}
]"#;

/// Largest token count of one kind in one call.
pub const MAX_TOKENS: u64 = 100_000_000;
/// More rates than this is a configuration mistake, not a price list.
pub const MAX_RATES: usize = 1_000;
/// Longest model name.
pub const MAX_MODEL_CHARS: usize = 64;
/// Largest rate per million tokens or per call (credits).
const MAX_RATE_CREDITS: i64 = 1_000_000;

const TOKENS_PER_MILLION: i128 = 1_000_000;

/// One effective-dated price of a model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    /// `rate_<model>_<effective_from as yyyymmddThhmmssZ>`: stable across deploys.
    pub id: String,
    pub model: String,
    pub input_per_million: Credits,
    pub cached_input_per_million: Credits,
    pub output_per_million: Credits,
    pub per_request: Credits,
    pub effective_from: DateTime<Utc>,
}

/// What one call used, as an AI feature reports it (the `usage` of a debit
/// or capture; `cached_input_tokens` defaults to 0).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    pub model: String,
    pub input_tokens: u64,
    /// The part of `input_tokens` served from the prompt cache.
    #[serde(default)]
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
}

/// What a call may use at most, known before it runs (a hold's
/// `usage_estimate`): priced as that much input and `max_output_tokens` output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageEstimate {
    pub model: String,
    pub input_tokens: u64,
    pub max_output_tokens: u64,
}

impl UsageEstimate {
    /// The most the call may use: none of its input cached, every output token.
    pub fn as_usage(&self) -> Usage {
        Usage {
            model: self.model.clone(),
            input_tokens: self.input_tokens,
            cached_input_tokens: 0,
            output_tokens: self.max_output_tokens,
        }
    }
}

/// Every rate, ordered by model then `effective_from`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RateCard {
    rates: Vec<Rate>,
}

/// One rate as configured (`RATE_CARD`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateText {
    model: String,
    input_per_million: Credits,
    #[serde(default)]
    cached_input_per_million: Option<Credits>,
    output_per_million: Credits,
    #[serde(default)]
    per_request: Option<Credits>,
    effective_from: String,
}

/// The stable id of a model's rate from `effective_from`.
pub fn rate_id(model: &str, effective_from: DateTime<Utc>) -> String {
    // By hand rather than through chrono's format strings (a smaller wasm).
    let (date, time) = (effective_from.date_naive(), effective_from.time());
    format!(
        "rate_{model}_{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        date.year(),
        date.month(),
        date.day(),
        time.hour(),
        time.minute(),
        time.second()
    )
}

/// A model name: 1 to 64 of `[A-Za-z0-9._:-]`.
pub fn is_model_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_MODEL_CHARS
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
}

fn rate_of(text: RateText) -> Result<Rate, String> {
    if !is_model_name(&text.model) {
        return Err(format!(
            "model {:?} must be 1 to {MAX_MODEL_CHARS} letters, digits, '.', '_', '-' or ':'",
            text.model
        ));
    }
    let effective_from = DateTime::parse_from_rfc3339(&text.effective_from)
        .map_err(|_| format!("{}: effective_from must be an RFC 3339 instant", text.model))?
        .with_timezone(&Utc);
    if effective_from.timestamp_subsec_nanos() != 0 {
        return Err(format!(
            "{}: effective_from must be a whole second",
            text.model
        ));
    }
    let rate = Rate {
        id: rate_id(&text.model, effective_from),
        cached_input_per_million: text
            .cached_input_per_million
            .unwrap_or(text.input_per_million),
        per_request: text.per_request.unwrap_or(Credits::ZERO),
        input_per_million: text.input_per_million,
        output_per_million: text.output_per_million,
        model: text.model,
        effective_from,
    };
    let amounts = [
        rate.input_per_million,
        rate.cached_input_per_million,
        rate.output_per_million,
        rate.per_request,
    ];
    let max = Credits::whole(MAX_RATE_CREDITS);
    if amounts.iter().any(|a| a.units() < 0 || *a > max) {
        return Err(format!(
            "{}: rates must be between 0 and {MAX_RATE_CREDITS} credits",
            rate.id
        ));
    }
    Ok(rate)
}

impl RateCard {
    /// Parses and validates `RATE_CARD`: a JSON list of rates, each model's
    /// `effective_from` distinct. Any problem refuses the whole card.
    pub fn parse(json: &str) -> Result<RateCard, String> {
        let texts: Vec<RateText> =
            serde_json::from_str(json).map_err(|e| format!("must be a JSON list of rates: {e}"))?;
        if texts.len() > MAX_RATES {
            return Err(format!("may list at most {MAX_RATES} rates"));
        }
        let mut rates = texts
            .into_iter()
            .map(rate_of)
            .collect::<Result<Vec<_>, _>>()?;
        rates.sort_by(|a, b| {
            (a.model.as_str(), a.effective_from).cmp(&(b.model.as_str(), b.effective_from))
        });
        if let Some(pair) = rates.windows(2).find(|w| w[0].id == w[1].id) {
            return Err(format!("{} is listed twice", pair[0].id));
        }
        Ok(RateCard { rates })
    }

    /// Every rate, ordered by model then `effective_from`.
    pub fn rates(&self) -> &[Rate] {
        &self.rates
    }

    /// Whether the card has any rate for `model` (in force or scheduled).
    pub fn knows(&self, model: &str) -> bool {
        self.rates.iter().any(|r| r.model == model)
    }

    /// The rate of `model` in force at `at`: the latest whose
    /// `effective_from` is not after it.
    pub fn in_force(&self, model: &str, at: DateTime<Utc>) -> Option<&Rate> {
        self.rates
            .iter()
            .rev()
            .find(|r| r.model == model && r.effective_from <= at)
    }

    /// Whether `rate` is its model's rate in force at `at`.
    pub fn is_in_force(&self, rate: &Rate, at: DateTime<Utc>) -> bool {
        self.in_force(&rate.model, at).map(|r| &r.id) == Some(&rate.id)
    }
}

/// Why usage could not be priced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PriceError {
    /// More cached input tokens than input tokens.
    CachedExceedsInput,
    /// A count over [`MAX_TOKENS`].
    TooManyTokens,
    /// The price does not fit a credit amount.
    Overflow,
}

/// The exact price of `usage` at `rate`, in 1/10,000 credit, rounded up:
/// `((input − cached) × input_rate + cached × cached_rate + output ×
/// output_rate) / 1,000,000 + per_request`.
pub fn price(rate: &Rate, usage: &Usage) -> Result<Credits, PriceError> {
    if usage.cached_input_tokens > usage.input_tokens {
        return Err(PriceError::CachedExceedsInput);
    }
    if [usage.input_tokens, usage.output_tokens]
        .iter()
        .any(|&t| t > MAX_TOKENS)
    {
        return Err(PriceError::TooManyTokens);
    }
    let uncached = i128::from(usage.input_tokens - usage.cached_input_tokens);
    let cached = i128::from(usage.cached_input_tokens);
    let output = i128::from(usage.output_tokens);
    // Units per million tokens × tokens: at most 1e8 × 1e10 × 3, far inside i128.
    let scaled = uncached * i128::from(rate.input_per_million.units())
        + cached * i128::from(rate.cached_input_per_million.units())
        + output * i128::from(rate.output_per_million.units());
    let tokens_units = (scaled + TOKENS_PER_MILLION - 1) / TOKENS_PER_MILLION;
    let units = tokens_units + i128::from(rate.per_request.units());
    i64::try_from(units)
        .ok()
        .filter(|u| *u <= crate::money::MAX_SAFE_UNITS)
        .map(Credits::from_units)
        .ok_or(PriceError::Overflow)
}

const _: () = assert!(UNITS_PER_CREDIT == 10_000);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The exact rational price of `usage` at `rate` as (numerator, denominator)
    /// in units, computed on its own to check [`price`] against.
    fn exact_units(rate: &Rate, usage: &Usage) -> (i128, i128) {
        let uncached = i128::from(usage.input_tokens - usage.cached_input_tokens);
        let numerator = uncached * i128::from(rate.input_per_million.units())
            + i128::from(usage.cached_input_tokens)
                * i128::from(rate.cached_input_per_million.units())
            + i128::from(usage.output_tokens) * i128::from(rate.output_per_million.units())
            + i128::from(rate.per_request.units()) * TOKENS_PER_MILLION;
        (numerator, TOKENS_PER_MILLION)
    }

    fn rate(input: &str, cached: &str, output: &str, per_request: &str) -> Rate {
        let json = format!(
            r#"[{{"model":"m","input_per_million":"{input}","cached_input_per_million":"{cached}","output_per_million":"{output}","per_request":"{per_request}","effective_from":"2025-01-01T00:00:00Z"}}]"#
        );
        RateCard::parse(&json).unwrap().rates()[0].clone()
    }

    fn usage(input: u64, cached: u64, output: u64) -> Usage {
        Usage {
            model: "m".into(),
            input_tokens: input,
            cached_input_tokens: cached,
            output_tokens: output,
        }
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn prices_match_hand_computed_cases() {
        // (input, cached, output, per_request rates; tokens; expected credits)
        type Case = (&'static str, &'static str, &'static str, &'static str);
        let cases: &[(Case, (u64, u64, u64), &str)] = &[
            // 1,000 in at 250/M = 0.25; 500 out at 1000/M = 0.5.
            (("250", "125", "1000", "0"), (1_000, 0, 500), "0.75"),
            // 600 uncached × 250 + 400 cached × 125 = 150,000 + 50,000 → 0.2 credits; + 0.5 output.
            (("250", "125", "1000", "0"), (1_000, 400, 500), "0.7"),
            // docs/api.md's worked example: 34,711.25 units → 34,712.
            (("250", "125", "1000", "0"), (12_345, 2_345, 678), "3.4712"),
            // per_request fee added once.
            (("300", "30", "1500", "0.01"), (1_000, 0, 1_000), "1.81"),
            // 1 token at 15/M = 0.000015 credits → rounds up to 0.0001.
            (("15", "7.5", "60", "0"), (1, 0, 0), "0.0001"),
            // Exactly 0.0001: no rounding.
            (("100", "100", "100", "0"), (1, 0, 0), "0.0001"),
            // 0.00010001 rounds up at the 5th decimal → 0.0002.
            (("100.01", "100", "100", "0"), (1, 0, 0), "0.0002"),
            // 7 cached at 7.5/M: 52.5e-6 credits → 0.0001 (cached rate, not input).
            (("15", "7.5", "60", "0"), (7, 7, 0), "0.0001"),
            // Nothing used: the per-request fee only, or zero.
            (("250", "125", "1000", "0.002"), (0, 0, 0), "0.002"),
            (("250", "125", "1000", "0"), (0, 0, 0), "0"),
            // The largest counts at the largest rates, without overflow.
            (
                ("1000000", "1000000", "1000000", "1000000"),
                (100_000_000, 0, 100_000_000),
                "201000000",
            ),
        ];
        for ((input, cached, output, fee), (i, c, o), expected) in cases {
            let got = price(&rate(input, cached, output, fee), &usage(*i, *c, *o)).unwrap();
            assert_eq!(
                got,
                Credits::parse(expected).unwrap(),
                "{input}/{cached}/{output}+{fee} for ({i},{c},{o})"
            );
        }
    }

    #[test]
    fn pricing_refuses_impossible_usage() {
        let r = rate("1", "1", "1", "0");
        assert_eq!(
            price(&r, &usage(10, 11, 0)),
            Err(PriceError::CachedExceedsInput)
        );
        assert_eq!(
            price(&r, &usage(MAX_TOKENS + 1, 0, 0)),
            Err(PriceError::TooManyTokens)
        );
        assert_eq!(
            price(&r, &usage(0, 0, MAX_TOKENS + 1)),
            Err(PriceError::TooManyTokens)
        );
        assert!(price(&r, &usage(MAX_TOKENS, MAX_TOKENS, MAX_TOKENS)).is_ok());
    }

    #[test]
    fn the_rate_in_force_is_the_latest_not_after_the_instant() {
        let card = RateCard::parse(DEFAULT_RATE_CARD).unwrap();
        let models: Vec<&str> = card.rates().iter().map(|r| r.model.as_str()).collect();
        assert_eq!(
            models,
            [
                "claude-sonnet-4",
                "claude-sonnet-4",
                "gpt-4o",
                "gpt-4o-mini"
            ]
        );
        let change = at("2030-01-01T00:00:00Z");
        let before = card
            .in_force("claude-sonnet-4", change - chrono::Duration::seconds(1))
            .unwrap();
        assert_eq!(before.id, "rate_claude-sonnet-4_20240101T000000Z");
        let after = card.in_force("claude-sonnet-4", change).unwrap();
        assert_eq!(after.id, "rate_claude-sonnet-4_20300101T000000Z");
        assert!(card.is_in_force(after, change));
        assert!(!card.is_in_force(before, change));
        assert!(card
            .in_force("gpt-4o", at("2023-12-31T23:59:59Z"))
            .is_none());
        assert!(card.in_force("gpt-5", change).is_none());
        assert!(card.knows("gpt-4o") && !card.knows("gpt-5"));
        // Cached input defaults to the input rate; per_request to zero.
        let card = RateCard::parse(
            r#"[{"model":"x","input_per_million":"2","output_per_million":"3","effective_from":"2025-06-01T12:30:00+02:00"}]"#,
        )
        .unwrap();
        let r = &card.rates()[0];
        assert_eq!(r.id, "rate_x_20250601T103000Z");
        assert_eq!(r.cached_input_per_million, Credits::whole(2));
        assert_eq!(r.per_request, Credits::ZERO);
    }

    #[test]
    fn invalid_cards_fail_closed() {
        let ok = r#""input_per_million":"1","output_per_million":"1","effective_from":"2025-01-01T00:00:00Z""#;
        for bad in [
            "".to_string(),
            "{}".to_string(),
            format!(r#"[{{"model":"",{ok}}}]"#),
            format!(r#"[{{"model":"has space",{ok}}}]"#),
            format!(r#"[{{"model":"m",{ok},"colour":"red"}}]"#),
            format!(r#"[{{"model":"m",{ok}}},{{"model":"m",{ok}}}]"#),
            r#"[{"model":"m","input_per_million":1,"output_per_million":"1","effective_from":"2025-01-01T00:00:00Z"}]"#.into(),
            r#"[{"model":"m","input_per_million":"-1","output_per_million":"1","effective_from":"2025-01-01T00:00:00Z"}]"#.into(),
            r#"[{"model":"m","input_per_million":"1000001","output_per_million":"1","effective_from":"2025-01-01T00:00:00Z"}]"#.into(),
            r#"[{"model":"m","input_per_million":"1","output_per_million":"1","effective_from":"2025-01-01"}]"#.into(),
            r#"[{"model":"m","input_per_million":"1","output_per_million":"1","effective_from":"2025-01-01T00:00:00.5Z"}]"#.into(),
        ] {
            assert!(RateCard::parse(&bad).is_err(), "accepted {bad}");
        }
        assert!(RateCard::parse(&format!(r#"[{{"model":"m",{ok}}}]"#)).is_ok());
    }

    fn any_rate() -> impl Strategy<Value = Rate> {
        let units = 0i64..=10_000_000_000;
        (
            units.clone(),
            units.clone(),
            units.clone(),
            0i64..=1_000_000,
        )
            .prop_map(|(i, c, o, f)| Rate {
                id: "rate_m_20250101T000000Z".into(),
                model: "m".into(),
                input_per_million: Credits::from_units(i),
                cached_input_per_million: Credits::from_units(c),
                output_per_million: Credits::from_units(o),
                per_request: Credits::from_units(f),
                effective_from: at("2025-01-01T00:00:00Z"),
            })
    }

    fn any_usage() -> impl Strategy<Value = Usage> {
        (0..=MAX_TOKENS, 0..=MAX_TOKENS, 0..=MAX_TOKENS)
            .prop_map(|(input, cached, output)| usage(input.max(cached), input.min(cached), output))
    }

    proptest! {
        #[test]
        fn price_is_the_exact_value_rounded_up_once(rate in any_rate(), u in any_usage()) {
            let got = i128::from(price(&rate, &u).unwrap().units());
            let (num, den) = exact_units(&rate, &u);
            // Never below the exact rational value, and less than 1 unit above it.
            prop_assert!(got * den >= num);
            prop_assert!((got - 1) * den < num);
        }

        #[test]
        fn price_is_monotone_in_every_token_count(
            rate in any_rate(),
            u in any_usage(),
            extra in 0u64..1_000_000,
            which in 0usize..3,
        ) {
            let mut more = u.clone();
            match which {
                0 => more.input_tokens = (u.input_tokens + extra).min(MAX_TOKENS),
                1 => more.output_tokens = (u.output_tokens + extra).min(MAX_TOKENS),
                // One more cached token of the same input costs no more if the
                // cached rate is lower, so compare cached growth with input grown too.
                _ => {
                    let grown = extra.min(MAX_TOKENS - u.input_tokens);
                    more.input_tokens = u.input_tokens + grown;
                    more.cached_input_tokens = u.cached_input_tokens + grown;
                }
            }
            prop_assert!(price(&rate, &more).unwrap() >= price(&rate, &u).unwrap());
        }
    }
}
