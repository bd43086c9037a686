// Package revocation owns the ledger of live credentials: which tasks are
// active, which credentials each task holds, and which credentials are on
// the deny list. It provides the Redis ledger shared by broker replicas and
// an in-memory ledger for `valet dev` and tests, with the stores beside
// them (records, retry queue, feed, controls); both pass the one
// conformance suite in revocation/conformance.
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
//	valet:generation                     hash: the ledger generation marker (generation.go)
//
// Beside them (governance.go, redis_tree.go, redis_records.go,
// queue_redis.go): epochs, the revocation feed, controls, bulk revocation
// jobs, task children, one-time uses, counters, agent records and the
// retry queue. Every key's lifetime:
//
//	task, task creds, cred               deadline (or latest credential expiry) + redis.retention
//	deny:<id>                            the credential's own expiry (at least 1 s)
//	deadlines, idx:*                     latest deadline held + redis.retention; older entries trimmed
//	task:<id>:children                   as the newest child's records
//	once:<key>, count:<key>              the use's expiry / the task's deadline
//	rec:<kind>:<id>, recidx:<kind>, list:<kind>:<id>   the expiry the broker gives the record (its task's deadline + redis.retention for events)
//	retry:rec:<id>, retry:due            the credential's expiry + redis.retention
//	epoch:<dimension>:<key>              before + 24 h (broker.EpochTTL, the longest credential life)
//	epochs                               as its longest-lived epoch
//	revocations (stream)                 24 h after its last entry; MAXLEN ~1,000,000, entries older than 24 h trimmed
//	generation                           24 h, refreshed by every reaper pass and controls refresh
//	job:<id>, jobs:running               max(redis.retention, 1 h) after the job's last save
//	job:<id>:lease                       the job lease
//	reaped, reaped:<batch>               a reaped batch awaiting its audit record: max(redis.retention, 30 s)
//	controls                             no TTL: a standing order lapses only when an admin lifts it
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
// and Record writes keys of several kinds, so in a Redis Cluster
// (NewModeClient, ModeCluster) the prefix must be a hash tag ("{valet}"):
// every key then lives in one slot, which keeps the scripts atomic and
// gives up write scale-out across shards. The stores refuse a cluster
// client with a prefix that would split slots (CheckClusterPrefix).
package revocation
