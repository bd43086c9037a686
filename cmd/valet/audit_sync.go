package main

import (
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/valet-dev/valet/audit"
)

// The values of audit.sync.
const (
	auditSyncGrant    = "grant"
	auditSyncInterval = "interval"

	defaultAuditSyncInterval = 100 * time.Millisecond
)

func (a AuditConfig) validateSync() []error {
	var errs []error
	switch a.Sync {
	case auditSyncGrant:
		if a.SyncInterval != 0 {
			errs = append(errs, fmt.Errorf("audit.sync_interval: is only used with audit.sync: interval"))
		}
	case auditSyncInterval:
		if d := time.Duration(a.SyncInterval); d < audit.MinSyncInterval || d > audit.MaxSyncInterval {
			errs = append(errs, fmt.Errorf("audit.sync_interval: %s must be between %s and %s", d, audit.MinSyncInterval, audit.MaxSyncInterval))
		}
	default:
		errs = append(errs, fmt.Errorf("audit.sync: %q must be grant or interval", a.Sync))
	}
	return errs
}

// applyAuditSync puts the audit log in the configured durability mode and
// says which in the log. The closer it returns stops the background fsync
// (after a last one) and then closes the file.
func applyAuditSync(l *audit.Log, file io.Closer, a AuditConfig, log *slog.Logger) (io.Closer, error) {
	if a.File == "stdout" {
		log.Info("audit durability: the trail goes to stdout, which is not fsynced (audit.sync applies to a file)", "audit_sync", a.Sync)
		return file, nil
	}
	if a.Sync != auditSyncInterval {
		log.Info("audit durability: every grant's record is fsynced before the grant is answered", "audit_sync", auditSyncGrant)
		return file, nil
	}
	stop, err := l.SyncEvery(time.Duration(a.SyncInterval))
	if err != nil {
		return nil, fmt.Errorf("audit.sync_interval: %w", err)
	}
	log.Warn("audit durability: grants are answered before their record is fsynced; a record reaches the disk at most audit.sync_interval "+
		"(plus the time of at most two fsyncs) after its grant was answered, so a machine crash can lose that much of the trail",
		"audit_sync", auditSyncInterval, "audit_sync_interval", time.Duration(a.SyncInterval).String())
	return closerFunc(func() error {
		errStop := stop()
		errClose := file.Close()
		if errStop != nil {
			return errStop
		}
		return errClose
	}), nil
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }
