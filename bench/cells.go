package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// The declare cells beside the main one (wValetDeclare, distinct tokens,
// audit fsynced before every answer), and Vault's login with an audit
// device.
const (
	wValetReused   = "Valet declare, reused token (one per agent)"
	wValetInterval = "Valet declare, distinct tokens, audit.sync interval"
	wVaultLoginAud = "Vault auth/jwt/login, file audit device"
)

// auditInterval is the bound of the audit.sync: interval broker.
const auditInterval = 100 * time.Millisecond

// redisCPU is redis-server's user and system CPU so far (INFO cpu).
func redisCPU(ctx context.Context, c *redis.Client) (time.Duration, bool) {
	s, err := c.Info(ctx, "cpu").Result()
	if err != nil {
		return 0, false
	}
	var total float64
	found := 0
	for line := range strings.SplitSeq(s, "\r\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || (k != "used_cpu_sys" && k != "used_cpu_user") {
			continue
		}
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return 0, false
		}
		total += f
		found++
	}
	return time.Duration(total * float64(time.Second)), found == 2
}

// procCPU is a process's user and system CPU so far, from /proc (clock
// ticks of 10 ms, the Linux USER_HZ).
func procCPU(pid int) (time.Duration, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	// The command name, field 2, is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 { // utime and stime are fields 14 and 15, here 11 and 12 (0-based, after the name)
		return 0, false
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return time.Duration(ut+st) * 10 * time.Millisecond, true
}

// cellMeter reads this process's CPU, redis-server's, Vault's (when vt is
// set) and v's identity cache (when v is set).
func cellMeter(ctx context.Context, admin *redis.Client, v *valet, vt *vault) func() meterSample {
	return func() meterSample {
		s := meterSample{self: selfCPU()}
		s.redis, s.ok = redisCPU(ctx, admin)
		if vt != nil {
			var ok bool
			s.vault, ok = procCPU(vt.pid())
			s.ok = s.ok && ok
		}
		if v != nil && v.identity != nil {
			s.hits, s.misses = v.identity.CacheStats()
		}
		return s
	}
}

// declareCell is POST /v1/tasks on v with the i-th identity token of
// tokens. Its before purges v's identity cache, so the cell starts cold
// and a token counts as a hit only if the cell itself presented it before.
func declareCell(name string, v *valet, meter func() meterSample, tokens []string) workload {
	return workload{
		name: name, want: http.StatusCreated,
		newReq: func(i int) (*http.Request, error) { return declareRequest(v, tokens[i%len(tokens)]) },
		before: func() error { v.identity.Purge(); return nil },
		meter:  meter,
	}
}

func declareRequest(v *valet, idToken string) (*http.Request, error) {
	req, err := http.NewRequest(http.MethodPost, v.url+"/v1/tasks", strings.NewReader(declarationBody))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+idToken)
	req.Header.Set("Content-Type", "application/json")
	return req, nil
}

// benchCells is the cells of one run in table order: the base workloads
// with the main declare cell metered and cold, then the reused-token and
// audit-interval declare cells after it, and Vault's login with a file
// audit device after the login without one.
func benchCells(ctx context.Context, base []workload, v, vi *valet, vt *vault, admin *redis.Client, idTokens []string, dir string) []workload {
	var out []workload
	for _, w := range base {
		switch w.name {
		case wValetDeclare:
			out = append(out, declareCell(wValetDeclare, v, cellMeter(ctx, admin, v, nil), idTokens))
			reused := declareCell(wValetReused, v, cellMeter(ctx, admin, v, nil), idTokens)
			reused.forAgents = func(n int) func(int) (*http.Request, error) {
				return func(i int) (*http.Request, error) { return declareRequest(v, idTokens[i%n]) }
			}
			out = append(out, reused)
			if vi != nil {
				out = append(out, declareCell(wValetInterval, vi, cellMeter(ctx, admin, vi, nil), idTokens))
			}
		case wVaultLogin:
			w.meter = cellMeter(ctx, admin, nil, vt)
			out = append(out, w)
			aud := w
			aud.name = wVaultLoginAud
			aud.before = func() error {
				_, err := vt.call(ctx, http.MethodPost, "/v1/sys/audit/file", map[string]any{
					"type": "file", "options": map[string]any{"file_path": filepath.Join(dir, "vault-audit.log")}})
				return err
			}
			aud.after = func() error {
				_, err := vt.call(ctx, http.MethodDelete, "/v1/sys/audit/file", nil)
				return err
			}
			out = append(out, aud)
		default:
			if strings.HasPrefix(w.name, "Vault") {
				w.meter = cellMeter(ctx, admin, nil, vt)
			} else {
				w.meter = cellMeter(ctx, admin, nil, nil)
			}
			out = append(out, w)
		}
	}
	return out
}
