package wire

import (
	"errors"
	"strings"
	"testing"

	"github.com/valet-dev/valet/broker"
)

func TestDecodeDeclarationSubjectToken(t *testing.T) {
	base := `{"template":"t","intent":"do it","tools":["x"]`
	for _, tc := range []struct {
		name, body, wantField, wantToken string
	}{
		{"absent", base + `}`, "", ""},
		{"present", base + `,"subject_token":"eyJ.a.b"}`, "", "eyJ.a.b"},
		{"empty", base + `,"subject_token":""}`, "subject_token", ""},
		{"not a string", base + `,"subject_token":1}`, "subject_token", ""},
		{"too long", base + `,"subject_token":"` + strings.Repeat("a", maxSubjectToken+1) + `"}`, "subject_token", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := DecodeDeclaration(strings.NewReader(tc.body))
			var e *broker.Error
			switch {
			case tc.wantField == "" && err != nil:
				t.Fatalf("err = %v", err)
			case tc.wantField != "" && (!errors.As(err, &e) || e.Field != tc.wantField):
				t.Fatalf("err = %v, want field %s", err, tc.wantField)
			case tc.wantField == "" && d.SubjectToken != tc.wantToken:
				t.Fatalf("SubjectToken = %q", d.SubjectToken)
			}
		})
	}
}
