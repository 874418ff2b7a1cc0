package billing

import (
	"strconv"

	"github.com/kgents/kgents-go/apijson"
)

// The data of every event is encoded by hand: the structs are flat and
// fixed, and reflection through encoding/json cost most of a metered call's
// overhead (BenchmarkBuildAndMarshal). The field names are the JSON tags of
// the structs, which TestConstructorsEncodeTheContract checks.

type jsonData interface{ appendJSON(b []byte) []byte }

func field(b []byte, first bool, name string) []byte {
	if !first {
		b = append(b, ',')
	}
	b = append(b, '"')
	b = append(b, name...)
	return append(b, '"', ':')
}

func (d APIRequest) appendJSON(b []byte) []byte {
	b = field(b, true, "endpoint")
	b = apijson.AppendString(b, d.Endpoint)
	b = field(b, false, "method")
	b = apijson.AppendString(b, d.Method)
	b = field(b, false, "status_code")
	b = strconv.AppendInt(b, int64(d.StatusCode), 10)
	b = field(b, false, "grpc_code")
	b = strconv.AppendInt(b, int64(d.GRPCCode), 10)
	b = field(b, false, "duration_ms")
	return strconv.AppendFloat(b, d.DurationMS, 'f', -1, 64)
}

func (d LLMTokens) appendJSON(b []byte) []byte {
	b = field(b, true, "tokens_in")
	b = strconv.AppendInt(b, int64(d.TokensIn), 10)
	b = field(b, false, "tokens_out")
	b = strconv.AppendInt(b, int64(d.TokensOut), 10)
	b = field(b, false, "tokens_total")
	b = strconv.AppendInt(b, int64(d.TokensTotal), 10)
	b = field(b, false, "model")
	b = apijson.AppendString(b, d.Model)
	b = field(b, false, "session_id")
	b = apijson.AppendString(b, d.SessionID)
	b = field(b, false, "mode")
	b = apijson.AppendString(b, d.Mode)
	b = field(b, false, "budget")
	return apijson.AppendString(b, d.Budget)
}

func (d AgenteseInvoke) appendJSON(b []byte) []byte {
	b = field(b, true, "path")
	b = apijson.AppendString(b, d.Path)
	b = field(b, false, "aspect")
	b = apijson.AppendString(b, d.Aspect)
	b = field(b, false, "tokens_used")
	return strconv.AppendInt(b, int64(d.TokensUsed), 10)
}

func (d SessionCreate) appendJSON(b []byte) []byte {
	b = field(b, true, "session_id")
	b = apijson.AppendString(b, d.SessionID)
	b = field(b, false, "agent_type")
	return apijson.AppendString(b, d.AgentType)
}

func (d SessionMessage) appendJSON(b []byte) []byte {
	b = field(b, true, "session_id")
	b = apijson.AppendString(b, d.SessionID)
	b = field(b, false, "role")
	b = apijson.AppendString(b, d.Role)
	b = field(b, false, "message_length")
	return strconv.AppendInt(b, int64(d.MessageLength), 10)
}

// encodeData renders event data as a JSON object.
func encodeData(d jsonData) []byte {
	b := make([]byte, 0, 192)
	b = append(b, '{')
	b = d.appendJSON(b)
	return append(b, '}')
}
