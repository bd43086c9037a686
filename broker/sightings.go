package broker

import "time"

// Sightings hears of every agent that was granted a task (declared or
// delegated), for the agent inventory (package inventory). Saw is called on
// the request path after the grant is recorded and audited: it must not
// block, must not do I/O and must not fail; an implementation that cannot
// keep a sighting drops it and counts the drop. It may read p.Claims after
// Saw returns (a verified token's claims are never changed) but must not
// change them. Implementations are safe for concurrent use.
type Sightings interface {
	Saw(p Principal, template string, at time.Time)
}
