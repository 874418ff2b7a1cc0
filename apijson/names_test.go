package apijson_test

import (
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/kgents/kgents-go/apijson"
)

func TestSnakeCase(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"":                 "",
		"OK":               "ok",
		"HTTPStatus":       "http_status",
		"KeyID":            "key_id",
		"Mode2Budget":      "mode2_budget",
		"Mode":             "mode",
		"SessionStatus":    "session_status",
		"PermissionDenied": "permission_denied",
		"already_snake":    "already_snake",
		"lowerThenUpper":   "lower_then_upper",
	} {
		if got := apijson.SnakeCase(in); got != want {
			t.Errorf("SnakeCase(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestCodeName: the code names of the REST error bodies (SPEC §4.1).
func TestCodeName(t *testing.T) {
	t.Parallel()
	for c, want := range map[codes.Code]string{
		codes.OK:                 "ok",
		codes.Canceled:           "canceled",
		codes.Unknown:            "unknown",
		codes.InvalidArgument:    "invalid_argument",
		codes.DeadlineExceeded:   "deadline_exceeded",
		codes.NotFound:           "not_found",
		codes.AlreadyExists:      "already_exists",
		codes.PermissionDenied:   "permission_denied",
		codes.ResourceExhausted:  "resource_exhausted",
		codes.FailedPrecondition: "failed_precondition",
		codes.Aborted:            "aborted",
		codes.OutOfRange:         "out_of_range",
		codes.Unimplemented:      "unimplemented",
		codes.Internal:           "internal",
		codes.Unavailable:        "unavailable",
		codes.DataLoss:           "data_loss",
		codes.Unauthenticated:    "unauthenticated",
		codes.Code(99):           "unknown",
	} {
		if got := apijson.CodeName(c); got != want {
			t.Errorf("CodeName(%d) = %q, want %q", c, got, want)
		}
	}
}
