-- Which leader's epoch claimed a pending notification (docs/ha.md "Notifications exactly once"): a claim hides
-- the row for the claim's lease (IOC_ALERTS__NOTIFY__LEASE_S, 120 s). A leader killed between its claim and
-- the send would hold the page back that long; a new leader takes back every claim of an older epoch at once.
-- NULL: not claimed (new, waiting for a retry, deferred by the rate limit), or claimed outside a cluster.
ALTER TABLE notifications ADD COLUMN claim_epoch bigint;
