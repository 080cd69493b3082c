//! The wire's validation bounds, each checked at its edge (the largest value
//! accepted, the first one refused), the error bodies a client reads, and the
//! shapes of entries and holds. End-to-end tests cover these through HTTP;
//! here each rule is pinned where it is decided, so a changed bound or a
//! dropped check fails a fast native test.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use wallet_core::api::{
    check_idempotency_key, entry_json, hold_json, is_org_id, parse_batch, parse_body,
    parse_body_within, ApiError, BatchSlot, DailyCapBody, DebitBody, DevPaymentMethodBody,
    FeatureCapsBody, HoldBody, PurchaseBody, SignupBody, MAX_BATCH_ITEMS, MAX_BODY_BYTES,
    MAX_IDEMPOTENCY_KEY_CHARS, MAX_METADATA_KEYS, MAX_METADATA_KEY_CHARS, MAX_METADATA_VALUE_CHARS,
    MAX_ORG_ID_CHARS, MAX_REF_ID_CHARS,
};
use wallet_core::wallet::{PurchaseSource, Wallet};
use wallet_core::{Credits, DebitRequest, HoldRequest, PurchaseCredit, Rejection, WalletConfig};

fn c(text: &str) -> Credits {
    Credits::parse(text).unwrap()
}

fn at(text: &str) -> DateTime<Utc> {
    text.parse().unwrap()
}

/// The field a 422 names (panics on any other error).
fn field(err: ApiError) -> String {
    assert_eq!(err.status(), 422, "{err:?}");
    err.body()["error"]["field"]
        .as_str()
        .unwrap_or_else(|| panic!("no field in {err:?}"))
        .to_string()
}

fn debit(amount: &str) -> DebitBody {
    DebitBody {
        feature: "chat".into(),
        amount: Some(c(amount)),
        usage: None,
        user_id: None,
        project_id: None,
        metadata: None,
    }
}

#[test]
fn an_organization_id_is_1_to_64_of_letters_digits_underscore_and_dash() {
    let longest = "a".repeat(MAX_ORG_ID_CHARS);
    for good in ["a", "acme", "Acme_Corp-2", "_", "-", "0", longest.as_str()] {
        assert!(is_org_id(good), "{good:?} is an organization id");
    }
    let too_long = "a".repeat(MAX_ORG_ID_CHARS + 1);
    for bad in [
        "",
        "acme corp",
        "acme.io",
        "a/b",
        "acmé",
        "a\n",
        too_long.as_str(),
    ] {
        assert!(!is_org_id(bad), "{bad:?} is not an organization id");
    }
}

fn signup(org_id: &str, owner_id: &str, customer: Option<&str>) -> SignupBody {
    SignupBody {
        org_id: org_id.into(),
        owner_id: owner_id.into(),
        stripe_customer_id: customer.map(str::to_string),
    }
}

#[test]
fn a_signup_names_the_field_it_refuses() {
    assert_eq!(signup("acme", "ann", None).validate(), Ok(()));
    assert_eq!(
        field(signup("acme corp", "ann", None).validate().unwrap_err()),
        "org_id"
    );
    assert_eq!(
        field(signup("", "ann", None).validate().unwrap_err()),
        "org_id"
    );
    assert_eq!(
        field(signup("acme", "", None).validate().unwrap_err()),
        "owner_id"
    );
    // A Stripe customer id: cus_ and letters, digits or underscores, at most 64.
    let longest = format!("cus_{}", "A".repeat(60));
    for good in ["cus_123", "cus_Ab_9", longest.as_str()] {
        assert_eq!(
            signup("acme", "ann", Some(good)).validate(),
            Ok(()),
            "{good}"
        );
    }
    let too_long = format!("cus_{}", "A".repeat(61));
    for bad in [
        "cs_123",
        "123",
        "cus-123",
        "cus_12 3",
        "cus_é",
        too_long.as_str(),
    ] {
        assert_eq!(
            field(signup("acme", "ann", Some(bad)).validate().unwrap_err()),
            "stripe_customer_id",
            "{bad}"
        );
    }
}

#[test]
fn caller_references_are_1_to_128_printable_characters() {
    let cfg = WalletConfig::defaults();
    let with_user = |user: &str| DebitBody {
        user_id: Some(user.into()),
        ..debit("1")
    };
    // Characters, not bytes: 128 two-byte characters are fine.
    for good in ["u".repeat(MAX_REF_ID_CHARS), "é".repeat(MAX_REF_ID_CHARS)] {
        assert_eq!(with_user(&good).validate(&cfg), Ok(()));
    }
    for bad in [
        String::new(),
        "u".repeat(MAX_REF_ID_CHARS + 1),
        "a\tb".into(),
    ] {
        assert_eq!(
            field(with_user(&bad).validate(&cfg).unwrap_err()),
            "user_id"
        );
    }
    let project = DebitBody {
        project_id: Some("p".repeat(MAX_REF_ID_CHARS + 1)),
        ..debit("1")
    };
    assert_eq!(field(project.validate(&cfg).unwrap_err()), "project_id");
}

#[test]
fn a_spend_amount_of_the_largest_operation_is_accepted_and_one_unit_more_refused() {
    let cfg = WalletConfig::defaults();
    assert_eq!(cfg.max_operation, c("10000"));
    assert_eq!(debit("10000").validate(&cfg), Ok(()));
    assert_eq!(debit("0.0001").validate(&cfg), Ok(()));
    let err = debit("10000.0001").validate(&cfg).unwrap_err();
    assert_eq!(
        err,
        ApiError::Rejected(Rejection::AmountOutOfRange {
            max: cfg.max_operation
        })
    );
    assert_eq!(field(err), "amount");
    let hold = |amount: &str| HoldBody {
        feature: "chat".into(),
        amount: Some(c(amount)),
        usage_estimate: None,
        user_id: None,
        project_id: None,
        ttl_seconds: None,
    };
    assert_eq!(hold("10000").validate(&cfg), Ok(()));
    assert_eq!(
        field(hold("10000.0001").validate(&cfg).unwrap_err()),
        "amount"
    );
}

fn metadata(pairs: &[(String, String)]) -> DebitBody {
    DebitBody {
        metadata: Some(pairs.iter().cloned().collect()),
        ..debit("1")
    }
}

#[test]
fn metadata_bounds_keys_values_and_its_whole_size() {
    let cfg = WalletConfig::defaults();
    let kv = |k: &str, v: &str| (k.to_string(), v.to_string());

    // At most 20 keys.
    let keys = |n: usize| -> Vec<(String, String)> {
        (0..n).map(|i| kv(&format!("k{i:02}"), "v")).collect()
    };
    assert_eq!(metadata(&keys(MAX_METADATA_KEYS)).validate(&cfg), Ok(()));
    assert_eq!(
        field(
            metadata(&keys(MAX_METADATA_KEYS + 1))
                .validate(&cfg)
                .unwrap_err()
        ),
        "metadata"
    );

    // Keys of 1 to 40 characters.
    let longest_key = "k".repeat(MAX_METADATA_KEY_CHARS);
    assert_eq!(metadata(&[kv(&longest_key, "v")]).validate(&cfg), Ok(()));
    for bad in [String::new(), "k".repeat(MAX_METADATA_KEY_CHARS + 1)] {
        assert_eq!(
            field(metadata(&[kv(&bad, "v")]).validate(&cfg).unwrap_err()),
            "metadata",
            "key {bad:?}"
        );
    }

    // Values of at most 500 characters; the error names the key.
    let longest_value = "v".repeat(MAX_METADATA_VALUE_CHARS);
    assert_eq!(metadata(&[kv("k", &longest_value)]).validate(&cfg), Ok(()));
    assert_eq!(metadata(&[kv("k", "")]).validate(&cfg), Ok(()));
    let too_long = "v".repeat(MAX_METADATA_VALUE_CHARS + 1);
    assert_eq!(
        field(metadata(&[kv("k", &too_long)]).validate(&cfg).unwrap_err()),
        "metadata.k"
    );

    // At most `max_metadata_bytes` of JSON in all: exactly the limit is fine.
    let sized = |total: usize| {
        // {"a":"…","b":"…","c":"…"} is 22 bytes around its values.
        let values = total - 22;
        let pairs = [
            kv("a", &"x".repeat(MAX_METADATA_VALUE_CHARS)),
            kv("b", &"x".repeat(MAX_METADATA_VALUE_CHARS)),
            kv("c", &"x".repeat(values - 2 * MAX_METADATA_VALUE_CHARS)),
        ];
        let body = metadata(&pairs);
        let json = serde_json::to_string(body.metadata.as_ref().unwrap()).unwrap();
        assert_eq!(json.len(), total);
        body
    };
    assert_eq!(sized(cfg.max_metadata_bytes).validate(&cfg), Ok(()));
    let err = sized(cfg.max_metadata_bytes + 1)
        .validate(&cfg)
        .unwrap_err();
    assert_eq!(field(err), "metadata");
}

#[test]
fn idempotency_keys_take_1_to_255_visible_ascii_characters() {
    let longest = "k".repeat(MAX_IDEMPOTENCY_KEY_CHARS);
    assert_eq!(check_idempotency_key(Some(&longest)).unwrap(), longest);
    assert_eq!(check_idempotency_key(Some("!~")).unwrap(), "!~");
    let too_long = "k".repeat(MAX_IDEMPOTENCY_KEY_CHARS + 1);
    for bad in [too_long.as_str(), "", "a b", "é", "a\u{7f}"] {
        assert_eq!(
            field(check_idempotency_key(Some(bad)).unwrap_err()),
            "Idempotency-Key",
            "{bad:?}"
        );
    }
}

#[test]
fn a_hold_lives_1_to_3600_seconds() {
    let cfg = WalletConfig::defaults();
    assert_eq!(cfg.hold_ttl_max_seconds, 3600);
    let hold = |ttl: Option<i64>| HoldBody {
        feature: "chat".into(),
        amount: Some(c("1")),
        usage_estimate: None,
        user_id: None,
        project_id: None,
        ttl_seconds: ttl,
    };
    for good in [None, Some(1), Some(300), Some(3600)] {
        assert_eq!(hold(good).validate(&cfg), Ok(()), "{good:?}");
    }
    for bad in [Some(0), Some(-1), Some(3601)] {
        let err = hold(bad).validate(&cfg).unwrap_err();
        assert_eq!(
            err,
            ApiError::Rejected(Rejection::HoldTtlOutOfRange { max_seconds: 3600 })
        );
        assert_eq!(field(err), "ttl_seconds", "{bad:?}");
    }
    let poetry = HoldBody {
        feature: "poetry".into(),
        ..hold(None)
    };
    assert_eq!(field(poetry.validate(&cfg).unwrap_err()), "feature");
    let user = HoldBody {
        user_id: Some(String::new()),
        ..hold(None)
    };
    assert_eq!(field(user.validate(&cfg).unwrap_err()), "user_id");
}

#[test]
fn a_purchase_names_a_pack_of_the_catalogue() {
    let cfg = WalletConfig::defaults();
    let body = |pack: &str| PurchaseBody {
        pack_id: pack.into(),
    };
    for pack in &cfg.packs {
        assert_eq!(body(&pack.id).validate(&cfg), Ok(()));
    }
    let err = body("platinum").validate(&cfg).unwrap_err();
    assert_eq!(field(err.clone()), "pack_id");
    assert!(
        err.body()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("starter"),
        "the message lists the packs"
    );
}

#[test]
fn a_development_payment_method_is_a_stripe_pm_id() {
    let body = |pm: &str| DevPaymentMethodBody {
        payment_method: pm.into(),
    };
    let longest = format!("pm_{}", "a".repeat(61));
    for good in ["pm_card_visa", "pm_123", longest.as_str()] {
        assert_eq!(body(good).validate(), Ok(()), "{good}");
    }
    let too_long = format!("pm_{}", "a".repeat(62));
    for bad in [
        "card_visa",
        "pm-card",
        "pm_card-visa",
        "pm_card visa",
        too_long.as_str(),
    ] {
        assert_eq!(
            field(body(bad).validate().unwrap_err()),
            "payment_method",
            "{bad}"
        );
    }
}

#[test]
fn a_daily_cap_is_above_zero_and_at_most_the_maximum() {
    let cfg = WalletConfig::defaults();
    assert_eq!(cfg.daily_cap_max, c("50000"));
    let body = |cap: &str| DailyCapBody { daily_cap: c(cap) };
    for good in ["0.0001", "500", "50000"] {
        assert_eq!(body(good).validate(&cfg), Ok(()), "{good}");
    }
    for bad in ["0", "50000.0001"] {
        let err = body(bad).validate(&cfg).unwrap_err();
        assert_eq!(
            err,
            ApiError::Rejected(Rejection::DailyCapOutOfRange {
                max: cfg.daily_cap_max
            })
        );
        assert_eq!(field(err), "daily_cap", "{bad}");
    }
}

#[test]
fn feature_caps_name_features_with_caps_up_to_the_maximum_or_null() {
    let cfg = WalletConfig::defaults();
    let body = |pairs: &[(&str, Option<&str>)]| FeatureCapsBody {
        caps: pairs
            .iter()
            .map(|(f, cap)| (f.to_string(), cap.map(c)))
            .collect::<BTreeMap<_, _>>(),
    };
    for good in [
        body(&[("chat", Some("50000"))]),
        body(&[("chat", Some("0.0001")), ("nl_alerts", None)]),
        body(&[("auto_triage", None)]),
    ] {
        assert_eq!(good.validate(&cfg), Ok(()), "{good:?}");
    }
    assert_eq!(field(body(&[]).validate(&cfg).unwrap_err()), "caps");
    for (bad, named) in [
        (body(&[("poetry", Some("1"))]), "caps.poetry"),
        (
            body(&[("chat", Some("1")), ("poetry", None)]),
            "caps.poetry",
        ),
        (body(&[("chat", Some("0"))]), "caps.chat"),
        (body(&[("chat", Some("50000.0001"))]), "caps.chat"),
    ] {
        assert_eq!(field(bad.validate(&cfg).unwrap_err()), named);
    }
}

#[test]
fn a_body_of_exactly_the_limit_is_read_and_one_byte_more_refused() {
    let json = br#"{"feature":"chat","amount":"1"}"#;
    let padded = |len: usize| {
        let mut bytes = json.to_vec();
        bytes.resize(len, b' ');
        bytes
    };
    let body: DebitBody = parse_body(&padded(MAX_BODY_BYTES)).unwrap();
    assert_eq!(body, debit("1"));
    assert_eq!(
        parse_body::<DebitBody>(&padded(MAX_BODY_BYTES + 1)),
        Err(ApiError::PayloadTooLarge {
            limit_bytes: MAX_BODY_BYTES
        })
    );
    // A route's own limit is the one applied.
    assert!(parse_body_within::<DebitBody>(json, json.len()).is_ok());
    assert_eq!(
        parse_body_within::<DebitBody>(json, json.len() - 1),
        Err(ApiError::PayloadTooLarge {
            limit_bytes: json.len() - 1
        })
    );
}

#[test]
fn an_object_where_another_shape_is_expected_is_an_error_of_the_body() {
    // The error is at the root of the document: it names `body`, not a path.
    let err = parse_body::<Vec<String>>(br#"{"a":1}"#).unwrap_err();
    assert_eq!(field(err), "body");
    let err = parse_body::<BTreeMap<String, u32>>(br#"{"a":"x"}"#).unwrap_err();
    assert_eq!(field(err), "a");
}

fn batch_of(n: usize) -> String {
    let items: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"idempotency_key":"k{i}","feature":"chat","amount":"1"}}"#))
        .collect();
    format!(r#"{{"debits":[{}]}}"#, items.join(","))
}

#[test]
fn a_batch_takes_1_to_1000_debits() {
    let cfg = WalletConfig::defaults();
    let slots = parse_batch(batch_of(MAX_BATCH_ITEMS).as_bytes(), &cfg).unwrap();
    assert_eq!(slots.len(), MAX_BATCH_ITEMS);
    assert!(slots.iter().all(|s| matches!(s, BatchSlot::Debit { .. })));
    assert_eq!(parse_batch(batch_of(1).as_bytes(), &cfg).unwrap().len(), 1);
    for n in [0, MAX_BATCH_ITEMS + 1] {
        assert_eq!(
            field(parse_batch(batch_of(n).as_bytes(), &cfg).unwrap_err()),
            "debits",
            "{n} debits"
        );
    }
}

#[test]
fn refusals_carry_their_details_and_retry_after() {
    let now = at("2030-01-01T23:59:58.5Z");
    let resumes_at = at("2030-01-02T00:00:00Z");

    let err = ApiError::Rejected(Rejection::InsufficientCredits {
        available: c("1.5"),
        requested: c("2"),
    });
    assert_eq!((err.status(), err.code()), (402, "insufficient_credits"));
    let body = err.body();
    assert_eq!(body["error"]["available"], json!(c("1.5")));
    assert_eq!(body["error"]["requested"], json!(c("2")));
    assert_eq!(err.retry_after_seconds(now), None);

    let err = ApiError::Rejected(Rejection::FeatureCapReached {
        feature: "chat".into(),
        resumes_at,
        feature_cap: c("10"),
        cap_remaining: c("0.5"),
        requested: c("1"),
    });
    assert_eq!((err.status(), err.code()), (429, "feature_cap_reached"));
    assert_eq!(err.retry_after_seconds(now), Some(2));
    let body = err.body();
    assert_eq!(body["error"]["feature"], "chat");
    assert_eq!(body["error"]["resumes_at"], "2030-01-02T00:00:00.000Z");
    assert_eq!(body["error"]["feature_cap"], json!(c("10")));
    assert_eq!(body["error"]["cap_remaining"], json!(c("0.5")));
    assert_eq!(body["error"]["requested"], json!(c("1")));
    assert!(body["error"]["message"].as_str().unwrap().contains("chat"));

    // A resume time already past asks for no wait at all.
    assert_eq!(err.retry_after_seconds(at("2030-01-02T00:00:05Z")), Some(0));

    let err = ApiError::RateLimited {
        retry_after_seconds: 7,
    };
    assert_eq!((err.status(), err.code()), (429, "rate_limited"));
    assert_eq!(err.retry_after_seconds(now), Some(7));
    assert_eq!(ApiError::Internal.retry_after_seconds(now), None);
}

#[test]
fn entries_show_attribution_only_on_spending_and_optional_fields_only_when_set() {
    let cfg = WalletConfig::defaults();
    let (mut wallet, grant) = Wallet::open("acme", "ann", None, &cfg, at("2030-01-01T10:00:00Z"));
    let grant = entry_json(&grant.unwrap());
    let keys = |v: &Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
    let mut expected = vec!["amount", "balance_after", "created_at", "id", "kind"];
    assert_eq!(keys(&grant), expected);
    assert_eq!(grant["kind"], "trial_grant");
    assert_eq!(grant["id"], "le_000000000001");
    assert_eq!(grant["created_at"], "2030-01-01T10:00:00.000Z");

    let entry = wallet
        .debit(
            &DebitRequest {
                feature: "chat".into(),
                amount: c("2"),
                user_id: None,
                project_id: Some("p1".into()),
                metadata: Some([("run".to_string(), "7".to_string())].into()),
            },
            &cfg,
        )
        .unwrap();
    let debit = entry_json(&entry);
    assert_eq!(debit["kind"], "debit");
    assert_eq!(debit["amount"], json!(c("2")));
    assert_eq!(debit["balance_after"], json!(c("198")));
    assert_eq!(debit["feature"], "chat");
    assert_eq!(debit["user_id"], Value::Null, "present, null when absent");
    assert_eq!(debit["project_id"], "p1");
    assert_eq!(debit["usage_day"], "2030-01-01");
    assert_eq!(debit["metadata"], json!({"run": "7"}));
    assert!(debit.get("hold_id").is_none() && debit.get("pack_id").is_none());

    let purchase = wallet
        .credit_purchase(&PurchaseCredit {
            source: PurchaseSource::AutoTopUp,
            pack_id: "starter".into(),
            credits: c("1000"),
            amount_cents: 1000,
            currency: "usd".into(),
            payment_intent_id: "pi_1".into(),
            purchase_id: Some("pur_1".into()),
        })
        .unwrap();
    let purchase = entry_json(&purchase);
    expected.extend([
        "amount_cents",
        "currency",
        "pack_id",
        "payment_intent_id",
        "purchase_id",
        "source",
    ]);
    expected.sort_unstable();
    assert_eq!(keys(&purchase), expected);
    assert_eq!(purchase["source"], "auto_top_up");
    assert_eq!(purchase["amount_cents"], 1000);
}

#[test]
fn a_hold_shows_its_capture_entry_once_captured() {
    let cfg = WalletConfig::defaults();
    let (mut wallet, _) = Wallet::open("acme", "ann", None, &cfg, at("2030-01-01T10:00:00Z"));
    let request = |amount: &str| HoldRequest {
        feature: "chat".into(),
        amount: c(amount),
        user_id: Some("u1".into()),
        project_id: None,
        ttl_seconds: 60,
    };
    let hold = wallet.place_hold(&request("5"), &cfg).unwrap();
    let active = hold_json(&hold, None);
    assert_eq!(active["status"], "active");
    assert_eq!(active["amount"], json!(c("5")));
    assert_eq!(active["user_id"], "u1");
    assert_eq!(active["expires_at"], "2030-01-01T10:01:00.000Z");
    assert!(active.get("entry").is_none(), "no entry before a capture");

    let (captured, entry) = wallet.capture(&hold.id, c("3"), None).unwrap();
    let shown = hold_json(&captured, entry.as_ref());
    assert_eq!(shown["status"], "captured");
    assert_eq!(shown["captured_amount"], json!(c("3")));
    assert_eq!(shown["entry"]["kind"], "capture");
    assert_eq!(shown["entry"]["hold_id"], json!(hold.id));

    // Captured for zero: no entry, shown as null.
    let second = wallet.place_hold(&request("1"), &cfg).unwrap();
    let (zero, none) = wallet.capture(&second.id, Credits::ZERO, None).unwrap();
    assert!(none.is_none());
    assert_eq!(hold_json(&zero, None)["entry"], Value::Null);
}
