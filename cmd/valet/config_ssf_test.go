package main

import (
	"strings"
	"testing"
)

// TestValidateSSF: every problem of the ssf block is reported, naming its
// field; a sound block passes.
func TestValidateSSF(t *testing.T) {
	env := func(k string) string {
		if k == "SSF_PUSH" {
			return "Bearer x"
		}
		return ""
	}
	good := Config{Issuers: []IssuerEntry{{Name: "corp", IssuerURL: "https://idp.corp.example"}},
		Admin: AdminConfig{Issuers: []IssuerEntry{{Name: "admins"}}},
		SSF: SSFConfig{Transmitter: SSFTransmitterConfig{Enabled: true, PushHosts: []string{"receiver.example", "rcv.example:8443"}},
			Receiver: SSFReceiverConfig{Transmitters: []SSFTransmitterEntry{{Name: "okta", SubjectIssuer: "corp", AuthorizationHeaderEnv: "SSF_PUSH",
				Actions: map[string]string{"https://schemas.openid.net/secevent/risc/event-type/account-disabled": "freeze_agent"}}}}}}
	if errs := good.validateSSF(env); len(errs) != 0 {
		t.Fatalf("sound block refused: %v", errs)
	}
	bad := good
	bad.Admin = AdminConfig{}
	bad.SSF.Transmitter.QueueSize = -1
	bad.SSF.Transmitter.PushHosts = []string{"https://x/"}
	bad.SSF.Receiver.Transmitters = []SSFTransmitterEntry{{Name: "okta", SubjectIssuer: "nope", AuthorizationHeaderEnv: "UNSET",
		Actions: map[string]string{"x": "delete_everything", "y": "quarantine_template"}}}
	var msgs []string
	for _, e := range bad.validateSSF(env) {
		msgs = append(msgs, e.Error())
	}
	all := strings.Join(msgs, "\n")
	for _, want := range []string{"ssf.transmitter.queue_size", "ssf.transmitter.push_hosts[0]", "admin.issuers",
		"transmitters[0].subject_issuer", "transmitters[0].authorization_header_env", `transmitters[0].actions["x"]`,
		`transmitters[0].actions["y"]: quarantine_template needs the templates it suspends`} {
		if !strings.Contains(all, want) {
			t.Errorf("no error naming %s in:\n%s", want, all)
		}
	}
}
