package config_test

import (
	"strings"
	"testing"
	"time"

	"github.com/kgents/kgents-go/config"
)

func TestDefaults(t *testing.T) {
	t.Parallel()
	c, err := config.Load(config.MapLookup(nil))
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"HTTPPort", c.HTTPPort, 8000},
		{"GRPCPort", c.GRPCPort, 9090},
		{"MetricsPort", c.MetricsPort, 0},
		{"DevKeys", c.Auth.DevKeys, false},
		{"NATS.Enabled", c.NATS.Enabled, true},
		{"NATS.Embedded", c.NATS.Embedded(), true},
		{"NATS.EmbeddedPort", c.NATS.EmbeddedPort, 4223},
		{"NATS.Replicas", c.NATS.Replicas, 1},
		{"CORS", strings.Join(c.HTTP.CORSOrigins, ","), "http://localhost:3000"},
		{"MaxBody", c.HTTP.MaxBodyBytes, int64(1 << 20)},
		{"SSEHeartbeat", c.HTTP.SSEHeartbeat, 15 * time.Second},
		{"Drain", c.Shutdown.Drain, 5 * time.Second},
		{"Timeout", c.Shutdown.Timeout, 20 * time.Second},
		{"LLM.Timeout", c.LLM.Timeout, 120 * time.Second},
		{"LLM.Endpoint", c.LLM.Endpoint, ""},
		{"Log.Format", c.Log.Format, "text"},
		{"MemoryLimit", c.MemoryLimit, int64(0)},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s = %v, want %v", ch.name, ch.got, ch.want)
		}
	}
	if !strings.HasSuffix(c.DataDir, "/data") {
		t.Errorf("DataDir = %q, want an absolute path ending in /data", c.DataDir)
	}
}

func TestGoodValues(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		env   map[string]string
		check func(*config.Config) bool
	}{
		{"duration in Go syntax", map[string]string{"SSE_HEARTBEAT": "2s"}, func(c *config.Config) bool { return c.HTTP.SSEHeartbeat == 2*time.Second }},
		{"duration in plain seconds", map[string]string{"SHUTDOWN_DRAIN": "2.5"}, func(c *config.Config) bool { return c.Shutdown.Drain == 2500*time.Millisecond }},
		{"bool spellings", map[string]string{"KGENTS_DEV_KEYS": "Yes", "NATS_ENABLED": "off"}, func(c *config.Config) bool { return c.Auth.DevKeys && !c.NATS.Enabled }},
		{"empty value keeps the default", map[string]string{"HTTP_PORT": "  "}, func(c *config.Config) bool { return c.HTTPPort == 8000 }},
		{"servers list with blanks", map[string]string{"NATS_SERVERS": "nats://a:4222, ,nats://b:4222"}, func(c *config.Config) bool {
			return len(c.NATS.Servers) == 2 && !c.NATS.Embedded()
		}},
		{"legacy LLM names", map[string]string{"MORPHEUS_URL": "http://m:8080/v1/", "MORPHEUS_DEFAULT_MODEL": "m1", "MORPHEUS_TIMEOUT": "30"}, func(c *config.Config) bool {
			return c.LLM.Endpoint == "http://m:8080/v1" && c.LLM.Model == "m1" && c.LLM.Timeout == 30*time.Second
		}},
		{"new LLM names win", map[string]string{"LLM_ENDPOINT": "https://x/v1", "MORPHEUS_URL": "http://m/v1", "LLM_MODEL": "a", "MORPHEUS_DEFAULT_MODEL": "b"}, func(c *config.Config) bool {
			return c.LLM.Endpoint == "https://x/v1" && c.LLM.Model == "a"
		}},
		{"cors any", map[string]string{"CORS_ORIGINS": "*"}, func(c *config.Config) bool { return c.HTTP.CORSOrigins[0] == "*" }},
		{"cors list", map[string]string{"CORS_ORIGINS": "https://a.example.com, http://localhost:5173/"}, func(c *config.Config) bool {
			return len(c.HTTP.CORSOrigins) == 2 && c.HTTP.CORSOrigins[1] == "http://localhost:5173"
		}},
		{"memory limit in bytes, as the downward API writes it", map[string]string{"KGENTS_MEMORY_LIMIT": "536870912"}, func(c *config.Config) bool { return c.MemoryLimit == 512<<20 }},
		{"free embedded port", map[string]string{"NATS_EMBEDDED_PORT": "-1"}, func(c *config.Config) bool { return c.NATS.EmbeddedPort == -1 }},
		{"log level case-insensitive", map[string]string{"LOG_LEVEL": "DEBUG", "LOG_FORMAT": "JSON"}, func(c *config.Config) bool {
			return c.Log.Level == "debug" && c.Log.Format == "json"
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, err := config.Load(config.MapLookup(tc.env))
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if !tc.check(c) {
				t.Errorf("unexpected config: %+v", c)
			}
		})
	}
}

func TestBadValuesNameTheVariable(t *testing.T) {
	t.Parallel()
	cases := []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"HTTP_PORT": "eighty"}, `HTTP_PORT "eighty" is not a port`},
		{map[string]string{"GRPC_PORT": "70000"}, `GRPC_PORT "70000" is not a port`},
		{map[string]string{"HTTP_PORT": "9000", "GRPC_PORT": "9000"}, "GRPC_PORT must differ from HTTP_PORT"},
		{map[string]string{"NATS_ENABLED": "maybe"}, `NATS_ENABLED "maybe" is not a boolean`},
		{map[string]string{"SSE_HEARTBEAT": "soon"}, `SSE_HEARTBEAT "soon" is not a duration`},
		{map[string]string{"SSE_HEARTBEAT": "1ms"}, "SSE_HEARTBEAT \"1ms\" is below the minimum"},
		{map[string]string{"SHUTDOWN_DRAIN": "-1"}, "SHUTDOWN_DRAIN"},
		{map[string]string{"SHUTDOWN_DRAIN": "30s"}, "SHUTDOWN_DRAIN (30s) must be shorter than SHUTDOWN_TIMEOUT (20s)"},
		{map[string]string{"NATS_REPLICAS": "7"}, `NATS_REPLICAS "7" is not an integer from 1 to 5`},
		{map[string]string{"NATS_EMBEDDED_PORT": "0"}, "NATS_EMBEDDED_PORT"},
		{map[string]string{"LLM_ENDPOINT": "ftp://x"}, `LLM_ENDPOINT "ftp://x" is not an http(s) URL`},
		{map[string]string{"MORPHEUS_URL": "m:8080"}, `MORPHEUS_URL "m:8080" is not an http(s) URL`},
		{map[string]string{"OPENMETER_BASE_URL": "openmeter.cloud"}, `OPENMETER_BASE_URL "openmeter.cloud" is not an http(s) URL`},
		{map[string]string{"METRICS_PORT": "-3"}, `METRICS_PORT "-3" is not a port (0-65535; 0 serves /metrics on HTTP_PORT)`},
		{map[string]string{"HTTP_PORT": "x"}, `HTTP_PORT "x" is not a port (0-65535; 0 picks a free port)`},
		{map[string]string{"LLM_ENDPOINT": "http://x/v1"}, "LLM_MODEL is required"},
		{map[string]string{"CORS_ORIGINS": "localhost:3000"}, "CORS_ORIGINS \"localhost:3000\" is not an origin"},
		{map[string]string{"CORS_ORIGINS": "*,http://a.b"}, "CORS_ORIGINS mixes"},
		{map[string]string{"LOG_FORMAT": "xml"}, `LOG_FORMAT "xml" is not one of text, json`},
		{map[string]string{"NATS_TLS_CERT": "/c.pem"}, "NATS_TLS_CERT and NATS_TLS_KEY must be set together"},
		{map[string]string{"NATS_ENABLED": "false", "NATS_SERVERS": "nats://x"}, "NATS_SERVERS is set but NATS_ENABLED is false"},
		{map[string]string{"HTTP_MAX_BODY_BYTES": "10"}, "HTTP_MAX_BODY_BYTES"},
		{map[string]string{"KGENTS_MEMORY_LIMIT": "512Mi"}, `KGENTS_MEMORY_LIMIT "512Mi" is not a number of bytes of at least 16777216`},
		{map[string]string{"KGENTS_MEMORY_LIMIT": "1024"}, `KGENTS_MEMORY_LIMIT "1024" is not a number of bytes`},
	}
	for _, tc := range cases {
		t.Run(tc.want, func(t *testing.T) {
			t.Parallel()
			_, err := config.Load(config.MapLookup(tc.env))
			if err == nil {
				t.Fatalf("Load(%v) succeeded, want an error containing %q", tc.env, tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

func TestAllErrorsReportedAtOnce(t *testing.T) {
	t.Parallel()
	_, err := config.Load(config.MapLookup(map[string]string{"HTTP_PORT": "x", "GRPC_PORT": "y", "LOG_LEVEL": "loud"}))
	if err == nil {
		t.Fatal("want an error")
	}
	for _, name := range []string{"HTTP_PORT", "GRPC_PORT", "LOG_LEVEL"} {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error %q does not mention %s", err, name)
		}
	}
}

func TestParseDuration(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]time.Duration{"2s": 2 * time.Second, "2.5": 2500 * time.Millisecond, "0": 0, "1m30s": 90 * time.Second, " 3 ": 3 * time.Second} {
		got, err := config.ParseDuration(in)
		if err != nil || got != want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "x", "-2s", "-1", "1e12"} {
		if _, err := config.ParseDuration(in); err == nil {
			t.Errorf("ParseDuration(%q) succeeded, want an error", in)
		}
	}
}

func TestParseBool(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"true", "True", "TRUE", "1", "yes", "on"} {
		if b, err := config.ParseBool(s); err != nil || !b {
			t.Errorf("ParseBool(%q) = %v, %v", s, b, err)
		}
	}
	for _, s := range []string{"false", "0", "no", "off", "OFF"} {
		if b, err := config.ParseBool(s); err != nil || b {
			t.Errorf("ParseBool(%q) = %v, %v", s, b, err)
		}
	}
	if _, err := config.ParseBool("2"); err == nil {
		t.Error("ParseBool(2) succeeded")
	}
}

func TestBillingVariables(t *testing.T) {
	t.Parallel()
	c, err := config.Load(config.MapLookup(map[string]string{
		"STRIPE_API_KEY": "sk_test_1", "STRIPE_PRICE_PRO_MONTHLY": "price_1", "BILLING_GRACE": "2h",
		"KGENTS_PUBLIC_URL": "https://kgents.example/", "REDIS_URL": "redis://127.0.0.1:6379/0",
	}))
	if err != nil {
		t.Fatal(err)
	}
	b := c.Billing
	if !b.Enabled() || b.Grace != 2*time.Hour || b.ReturnURL != "https://kgents.example/console/billing" ||
		b.SuccessURL != "https://kgents.example/console/billing?checkout=success" || b.RedisURL == "" {
		t.Errorf("billing: %+v", b)
	}
	if c, err := config.Load(config.MapLookup(nil)); err != nil || c.Billing.Enabled() || c.Billing.Grace != 72*time.Hour ||
		c.Billing.CancelURL != "http://localhost:8000/console/billing?checkout=cancel" {
		t.Errorf("defaults: %+v %v", c.Billing, err)
	}
	for name, env := range map[string]map[string]string{
		"STRIPE_API_KEY":                  {"STRIPE_API_KEY": "pk_live_x", "STRIPE_PRICE_PRO_MONTHLY": "p"},
		"STRIPE_PRICE_PRO_MONTHLY":        {"STRIPE_API_KEY": "sk_test_1"},
		"STRIPE_WEBHOOK_SECRET":           {"STRIPE_WEBHOOK_SECRET": "secret"},
		"STRIPE_API_BASE":                 {"STRIPE_API_BASE": "ftp://x"},
		"BILLING_GRACE":                   {"BILLING_GRACE": "soon"},
		"BILLING_RETURN_URL":              {"BILLING_RETURN_URL": "nope"},
		"REDIS_URL":                       {"REDIS_URL": "http://redis"},
		"STRIPE_PRICE_ENTERPRISE_MONTHLY": {"STRIPE_PRICE_PRO_MONTHLY": "p", "STRIPE_PRICE_ENTERPRISE_MONTHLY": "p"},
	} {
		_, err := config.Load(config.MapLookup(env))
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: %v", name, err)
		}
	}
}
