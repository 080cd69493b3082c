//! Hands the organization's undelivered events to the `EVENTS` queue.

use super::*;

impl Instance {
    /// Hands the organization's undelivered events to the delivery queue
    /// (one message names the organization; the consumer reads the events
    /// from here, in order). Nothing leaves without a configured receiver.
    pub(super) async fn queue_events(&self) -> Result<()> {
        let settings = settings(&self.env).map_err(Error::RustError)?;
        let delivery = match &settings.events {
            Ok(Some(_)) => true,
            Ok(None) => false,
            Err(problem) => {
                console_error!("events are recorded but not sent: {problem}");
                false
            }
        };
        let Some((org_id, _)) = self.replica_target() else {
            return Ok(());
        };
        if !delivery {
            return Ok(());
        }
        let sql = self.state.storage().sql();
        let Some(newest) = wallet_store::newest_undelivered(&sql)? else {
            return Ok(());
        };
        if newest <= self.replica.events_queued_through.get() {
            return Ok(());
        }
        event_delivery::enqueue(&self.env, &org_id, 0).await?;
        self.replica.events_queued_through.set(newest);
        Ok(())
    }
}
