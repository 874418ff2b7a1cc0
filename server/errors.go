package server

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kgents/kgents-go/apijson"
	apiv1 "github.com/kgents/kgents-go/gen/kgents/api/v1"
	"github.com/kgents/kgents-go/interceptors"
	"github.com/kgents/kgents-go/interceptors/auth"
)

// httpStatus maps a gRPC code to the REST status (interceptors.HTTPStatus).
func httpStatus(c codes.Code) int { return interceptors.HTTPStatus(c) }

// errorBody is the JSON error body: {"detail", "code", "message"}.
func errorBody(code codes.Code, msg string) []byte {
	return apijson.AppendMessage(make([]byte, 0, 96+len(msg)), &apiv1.Error{
		Detail:  msg,
		Code:    apijson.CodeName(code),
		Message: msg,
	})
}

// writeError writes st as a REST error. Internal details never leave: the
// statuserr interceptor masked them on the gRPC side, and anything that
// failed outside it is masked here.
func writeError(w http.ResponseWriter, st *status.Status, requestID string) {
	code := st.Code()
	msg := st.Message()
	switch code {
	case codes.Internal, codes.Unknown, codes.DataLoss:
		if !strings.HasPrefix(msg, "internal error") {
			msg = "internal error"
			if requestID != "" {
				msg += " (request " + requestID + ")"
			}
		}
		code = codes.Internal
	}
	if reason := auth.TenantInactiveCode(st); reason != "" {
		// A suspended or canceled tenant: 402 with the reason as the code.
		writeRaw(w, http.StatusPaymentRequired, apijson.AppendMessage(nil, &apiv1.Error{Detail: msg, Code: reason, Message: msg}))
		return
	}
	h := w.Header()
	// Throttling and unavailability always say when to retry; any other
	// error does when it carries a RetryInfo (a session busy with a turn).
	if h.Get("Retry-After") == "" && (code == codes.ResourceExhausted || code == codes.Unavailable || hasRetryInfo(st)) {
		h.Set("Retry-After", strconv.Itoa(retryAfterSeconds(st)))
	}
	writeJSONError(w, httpStatus(code), code, msg)
}

func writeJSONError(w http.ResponseWriter, httpCode int, code codes.Code, msg string) {
	writeRaw(w, httpCode, errorBody(code, msg))
}

func writeRaw(w http.ResponseWriter, httpCode int, body []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Del("Content-Length")
	w.WriteHeader(httpCode)
	_, _ = w.Write(body)
}

func hasRetryInfo(st *status.Status) bool {
	for _, d := range st.Details() {
		if _, ok := d.(*errdetails.RetryInfo); ok {
			return true
		}
	}
	return false
}

// retryAfterSeconds reads a RetryInfo detail, defaulting to one second.
func retryAfterSeconds(st *status.Status) int {
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay() != nil {
			secs := int((ri.GetRetryDelay().AsDuration() + time.Second - 1) / time.Second)
			return max(secs, 1)
		}
	}
	return 1
}
