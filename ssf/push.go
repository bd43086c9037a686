package ssf

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// PushOnce offers every due SET of every enabled push stream to its
// receiver once (RFC 8935): 202 acknowledges it; a 400 with an RFC 8935
// error rejects it for good; anything else, or no answer, is retried with
// backoff until MaxAttempts, then dropped. Each outcome is counted.
func (t *Transmitter) PushOnce(ctx context.Context) {
	streams, err := t.cfg.Store.Streams(ctx)
	if err != nil {
		if ctx.Err() == nil {
			t.log.WarnContext(ctx, "ssf push: stream store unavailable", "err", err)
		}
		return
	}
	for _, s := range streams {
		if s.Method != DeliveryPush || s.Status != StatusEnabled {
			continue
		}
		// Each stream's round is bounded (pushRound), and the lease is
		// renewed before each, so a slow receiver never lets the lease
		// lapse into a second transmitter.
		if ok, err := t.cfg.Store.Lease(ctx, t.cfg.Owner, leaseTTL); err != nil || !ok {
			return
		}
		t.pushStream(ctx, s)
	}
}

// pushRound bounds the time one stream's round of pushes may take.
const pushRound = 2 * pushTimeout

func (t *Transmitter) pushStream(ctx context.Context, s Stream) {
	pending, err := t.cfg.Store.Pending(ctx, s.ID, pushBatch)
	if err != nil {
		t.log.WarnContext(ctx, "ssf push: queue unavailable", "stream_id", s.ID, "err", err)
		return
	}
	now := t.now()
	started := time.Now()
	for _, q := range pending {
		if q.NextAt.After(now) {
			continue
		}
		if ctx.Err() != nil || time.Since(started) > pushRound {
			return
		}
		switch res, reason := t.push(ctx, s, q); res {
		case ResultDelivered, ResultRejected:
			if _, err := t.cfg.Store.Ack(ctx, s.ID, []string{q.JTI}); err != nil {
				t.log.WarnContext(ctx, "ssf push: ack failed; the SET may be sent again", "stream_id", s.ID, "jti", q.JTI, "err", err)
			}
			t.sets.WithLabelValues(res).Inc()
			if res == ResultRejected {
				t.log.WarnContext(ctx, "ssf push: receiver rejected SET", "stream_id", s.ID, "jti", q.JTI, "reason", reason)
			}
		default:
			q.Attempts++
			if q.Attempts >= t.cfg.MaxAttempts {
				_, _ = t.cfg.Store.Ack(ctx, s.ID, []string{q.JTI})
				t.sets.WithLabelValues(ResultDropped).Inc()
				t.log.ErrorContext(ctx, "ssf push: SET dropped after its last attempt", "stream_id", s.ID, "jti", q.JTI,
					"attempts", q.Attempts, "reason", reason)
				continue
			}
			q.NextAt = now.Add(t.backoff(q.Attempts - 1))
			if err := t.cfg.Store.Retry(ctx, s.ID, q); err != nil {
				t.log.WarnContext(ctx, "ssf push: saving retry failed", "stream_id", s.ID, "jti", q.JTI, "err", err)
			}
			t.sets.WithLabelValues(ResultRetried).Inc()
			t.log.WarnContext(ctx, "ssf push failed; will retry", "stream_id", s.ID, "jti", q.JTI, "attempts", q.Attempts,
				"next_at", q.NextAt, "reason", reason)
			return // the receiver is failing: its other SETs wait for the next round
		}
	}
}

// push sends one SET and classifies the answer.
func (t *Transmitter) push(ctx context.Context, s Stream, q Queued) (string, string) {
	if err := t.checkPushURL(s.EndpointURL); err != nil {
		return ResultRejected, err.Error()
	}
	rctx, cancel := context.WithTimeout(ctx, pushTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, s.EndpointURL, strings.NewReader(q.SET))
	if err != nil {
		return ResultRejected, "building request: " + err.Error()
	}
	req.Header.Set("Content-Type", "application/secevent+jwt")
	req.Header.Set("Accept", "application/json")
	if s.AuthorizationHeader != "" {
		req.Header.Set("Authorization", s.AuthorizationHeader)
	}
	resp, err := t.cfg.HTTPClient.Do(req)
	if err != nil {
		return ResultRetried, "no answer: " + err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxPushResponseBytes))
	switch {
	case resp.StatusCode == http.StatusAccepted:
		return ResultDelivered, ""
	case resp.StatusCode == http.StatusBadRequest:
		var e struct {
			Err         string `json:"err"`
			Description string `json:"description"`
		}
		if json.Unmarshal(body, &e) == nil && e.Err != "" {
			return ResultRejected, boundPrintable(e.Err+": "+e.Description, 256)
		}
		return ResultRetried, "400 without an RFC 8935 error"
	default:
		return ResultRetried, "status " + resp.Status
	}
}

// checkPushURL admits an http(s) URL of an allowed host, with no user
// info or fragment.
func (t *Transmitter) checkPushURL(raw string) error {
	u, err := url.Parse(raw)
	switch {
	case err != nil || raw == "":
		return errors.New("delivery.endpoint_url must be an absolute URL")
	case u.Scheme != "https" && u.Scheme != "http":
		return errors.New("delivery.endpoint_url must be an http(s) URL")
	case u.User != nil || u.Fragment != "" || u.Host == "":
		return errors.New("delivery.endpoint_url must have a host and no user info or fragment")
	case !t.hosts[strings.ToLower(u.Host)] && !t.hosts[strings.ToLower(u.Hostname())]:
		return errors.New("delivery.endpoint_url names a host that is not on the push allow-list (ssf.transmitter.push_hosts)")
	}
	return nil
}

// boundPrintable cuts s to n bytes and replaces anything unprintable, for
// a value another party sent that goes into a log.
func boundPrintable(s string, n int) string {
	if len(s) > n {
		s = s[:n]
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == 0xfffd {
			return '?'
		}
		return r
	}, s)
}
