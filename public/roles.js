// Who may see and do what on this page, by the role in the session's token.
// The server is the authority: every route refuses the roles its entry in
// the route table does not list (crates/wallet-core/src/api.rs), whatever
// the page shows. These predicates only mirror that table, so that nobody is
// offered a form, a button or a tab the server would refuse.

const ROLE_NAMES = { owner: 'Owner', admin: 'Admin', member: 'Member', viewer: 'Viewer', service: 'Service' };

/** A role as people read it; one this page does not know is shown as the token names it. */
export const roleName = (role) => ROLE_NAMES[role] ?? role;

/** The daily cap, feature caps, automatic top-up and the low-balance alert (PUT routes): owner only. */
export const canChangeSettings = (role) => role === 'owner';

/** Buying credit packs (POST …/purchases), so topping up the wallet: owner only. */
export const canBuy = (role) => role === 'owner';

/** The audit trail of settings changes (GET …/audit): owner and admin, like the ledger. */
export const canReadAudit = (role) => role === 'owner' || role === 'admin';

/** The events the wallet reported (GET …/events): owner and admin, like the ledger. */
export const canReadEvents = (role) => role === 'owner' || role === 'admin';
