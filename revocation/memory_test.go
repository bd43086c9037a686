package revocation_test

import (
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/revocation"
	"github.com/valet-dev/valet/revocation/ledgertest"
)

func TestMemoryLedgerConformance(t *testing.T) {
	const retention = time.Hour
	ledgertest.Run(t, func(t *testing.T, clock *ledgertest.Clock) broker.Ledger {
		return revocation.NewMemoryLedger(clock.Now, retention)
	}, ledgertest.Options{ClockDrivesExpiry: true, Retention: retention})
}
