//! The owner's settings (daily cap, feature caps, auto top-up, alerts) and
//! the organization's Stripe customer: each change is audited with who,
//! when, before and after; a refused change records nothing.

use super::payments::cancel_unsent_auto_top_up;
use super::{audit, auto_top_up_settings, Reply, Step, Write};
use crate::api::{ApiError, CustomerReply, DailyCapBody, FeatureCapsBody};
use crate::audit::{Actor, AuditRecord, Setting};
use crate::auto_top_up::AutoTopUpBody;
use crate::events::AlertsBody;
use crate::wallet::Wallet;
use serde_json::json;

pub(super) fn set_auto_top_up(
    s: &mut Step,
    current: &Wallet,
    body: &AutoTopUpBody,
    actor: &Actor,
) -> Reply {
    let before = auto_top_up_settings(&s.wallet);
    if let Err(err) = s.wallet.set_auto_top_up(body) {
        return Reply::error(&ApiError::from(err), s.now);
    }
    let after = auto_top_up_settings(&s.wallet);
    let settings = s.wallet.auto_top_up();
    let other_pack = settings.pack_id != current.auto_top_up().pack_id;
    if !settings.enabled || other_pack {
        cancel_unsent_auto_top_up(&mut s.wallet, s.loaded.purchase.as_ref(), &mut s.d);
    }
    if s.wallet.auto_top_up() != current.auto_top_up() {
        s.changed = true;
    }
    if after != before {
        let record = audit(Setting::AutoTopUp, actor, s.now, before, after);
        s.d.writes.push(record);
    }
    // The view is answered after the decision's own effects (`Step::finish`).
    Reply::json(200, &())
}

pub(super) fn set_alerts(s: &mut Step, body: &AlertsBody, actor: &Actor) -> Reply {
    let before = json!(s.wallet.alerts().low_balance_threshold);
    s.wallet.set_alerts(body);
    let after = json!(s.wallet.alerts().low_balance_threshold);
    if after != before {
        s.changed = true;
        let record = audit(Setting::Alerts, actor, s.now, before, after);
        s.d.writes.push(record);
    }
    Reply::json(200, &())
}

pub(super) fn set_daily_cap(s: &mut Step, body: &DailyCapBody, actor: &Actor) -> Reply {
    let before = s.wallet.daily_cap();
    if let Err(r) = s.wallet.set_daily_cap(body.daily_cap, s.config) {
        return Reply::rejected(r, s.now);
    }
    s.changed = true;
    if s.wallet.daily_cap() != before {
        s.d.writes.push(Write::Audit(AuditRecord {
            setting: Setting::DailyCap,
            actor: actor.clone(),
            at: s.now,
            before: json!(before),
            after: json!(s.wallet.daily_cap()),
        }));
    }
    Reply::json(200, &s.wallet.view(s.config))
}

pub(super) fn set_feature_caps(s: &mut Step, body: &FeatureCapsBody, actor: &Actor) -> Reply {
    let before = json!(s.wallet.feature_caps());
    if let Err(r) = s.wallet.set_feature_caps(&body.caps, s.config) {
        return Reply::rejected(r, s.now);
    }
    let after = json!(s.wallet.feature_caps());
    if after != before {
        s.changed = true;
        s.d.writes.push(Write::Audit(AuditRecord {
            setting: Setting::FeatureCaps,
            actor: actor.clone(),
            at: s.now,
            before,
            after,
        }));
    }
    Reply::json(200, &s.wallet.view(s.config))
}

pub(super) fn stripe_customer(s: &Step) -> Reply {
    Reply::json(
        200,
        &CustomerReply {
            stripe_customer_id: s.wallet.stripe_customer_id().map(str::to_string),
        },
    )
}

/// The first customer recorded stays: concurrent first purchases may each
/// create one at Stripe, but the organization keeps one.
pub(super) fn set_stripe_customer(s: &mut Step, stripe_customer_id: &str) -> Reply {
    s.changed |= s.wallet.record_stripe_customer(stripe_customer_id);
    stripe_customer(s)
}

pub(super) fn ledger_shard(s: &Step) -> Reply {
    let shard = s
        .wallet
        .ledger_shard()
        .unwrap_or(crate::config::LEGACY_LEDGER_SHARD);
    Reply::json(200, &json!({ "ledger_shard": shard }))
}
