// Package revocation owns the ledger of live credentials: which tasks are
// active, which credentials each task holds, and which credentials are on
// the deny list. It provides the Redis ledger shared by broker replicas and
// an in-memory ledger for `valet dev` and tests; both pass the conformance
// suite in revocation/ledgertest.
//
// # Redis key layout
//
// Every key sits under a prefix (default "valet") and is namespaced by type.
// Ids and names inside keys are escaped ("%" → "%25", ":" → "%3A") so that
// no id can name another record's key. With the default prefix:
//
//	valet:task:<id>                      hash: the task (times in unix ms, tools as JSON)
//	valet:task:<id>:creds                list: the task's credential records (JSON), in issue order
//	valet:cred:<id>                      string: one credential record (JSON), for lookup by id
//	valet:deny:<id>                      string: present while the credential is denied
//	valet:deadlines                      zset: active task ids scored by deadline (unix ms)
//	valet:idx:agent:<issuer>:<agent>     zset: task ids of one agent scored by deadline
//	valet:idx:template:<name>            zset: task ids of one template scored by deadline
//	valet:idx:issuer:<issuer>            zset: task ids vouched for by one issuer scored by deadline
//
// Every key expires by itself. Task and credential records expire at the
// task's deadline (or its latest credential expiry, if later) plus the
// retention; deny entries at the credential's own expiry (at least one
// second after the task ended); the zsets at the latest deadline they hold
// plus the retention, and entries older than the retention are trimmed from
// them as new tasks are recorded.
//
// Record and End are Lua scripts, so each is atomic and one round trip. End
// builds the deny keys inside the script from the task's credential list,
// and Record writes keys of several slots, so the ledger needs a single
// Redis primary (or Sentinel), not Redis Cluster.
package revocation
