// Package renewal owns task renewal (POST /v1/tasks/{id}/renew): a live
// root task gets a later deadline, within its template's max_lifetime, and
// fresh credentials that live until it. It is built with explicit
// dependencies (the broker's Service as Core, the ledger and the audit
// trail) and wired by internal/server.
package renewal
