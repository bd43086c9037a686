package revocation_test

import (
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/revocation"
	"github.com/valet-dev/valet/revocation/conformance"
)

// memoryOptions: the memory ledger expires by the clock it is given, and
// keeps no incident stores (`valet dev` runs without them).
var memoryOptions = conformance.Options{
	ClockDrivesExpiry: true,
	Retention:         time.Hour,
	NoEpochs:          "the memory ledger backs `valet dev`, which runs without revoked-before epochs",
	NoJobs:            "the memory ledger backs `valet dev`, which runs without bulk revocation jobs",
}

func newMemoryLedger(_ *testing.T, clock *conformance.Clock) *revocation.MemoryLedger {
	return revocation.NewMemoryLedger(clock.Now, memoryOptions.Retention)
}

func TestMemoryLedgerConformance(t *testing.T) {
	conformance.Ledger(t, func(t *testing.T, clock *conformance.Clock) broker.Ledger {
		return newMemoryLedger(t, clock)
	}, memoryOptions)
}

func TestMemoryFeedConformance(t *testing.T) {
	conformance.Feed(t, func(t *testing.T, clock *conformance.Clock) (broker.Ledger, broker.Feed) {
		l := newMemoryLedger(t, clock)
		return l, l.Feed()
	})
}

func TestMemoryDueEnderConformance(t *testing.T) {
	o := memoryOptions
	o.NoReapLeases = "the memory ledger dies with its only reaper, so no other reaper could take a batch over"
	conformance.DueEnder(t, func(t *testing.T, clock *conformance.Clock) (a, b broker.Ledger) {
		l := newMemoryLedger(t, clock)
		return l, l
	}, o)
}

func TestMemoryLimiterConformance(t *testing.T) {
	conformance.Limiter(t, func(t *testing.T, clock *conformance.Clock) broker.Limiter {
		return newMemoryLedger(t, clock)
	}, memoryOptions)
}
