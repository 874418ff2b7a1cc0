// Package deploy holds the Kubernetes manifests, Prometheus rules and Grafana
// dashboard; this test keeps them consistent with the code and docs.
package deploy_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/kgents/kgents-go/config"
	"github.com/kgents/kgents-go/streaming"
)

func docs(t *testing.T, path string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	var out []map[string]any
	for {
		var d map[string]any
		err := dec.Decode(&d)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if d != nil {
			out = append(out, d)
		}
	}
}

func TestManifestsMatchTheCode(t *testing.T) {
	configDoc, err := os.ReadFile("../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	var grace int
	for _, d := range docs(t, "kubernetes/kgentsd.yaml") {
		switch d["kind"] {
		case "ConfigMap":
			for k, v := range d["data"].(map[string]any) {
				env[k] = v.(string)
			}
		case "Deployment":
			spec := d["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)
			grace = spec["terminationGracePeriodSeconds"].(int)
			for _, c := range spec["containers"].([]any) {
				for _, e := range c.(map[string]any)["env"].([]any) {
					env[e.(map[string]any)["name"].(string)] = ""
				}
			}
		}
	}
	for name := range env {
		if !strings.Contains(string(configDoc), "`"+name+"`") {
			t.Errorf("the manifest sets %s, which docs/configuration.md does not document", name)
		}
	}
	// The ConfigMap must be a valid configuration (secrets filled in).
	env["OPENMETER_API_KEY"], env["KGENTS_API_KEYS_FILE"] = "om_x", ""
	cfg, err := config.Load(config.MapLookup(env))
	if err != nil {
		t.Fatalf("the manifest's configuration does not load: %v", err)
	}
	if budget := int(cfg.Shutdown.Timeout.Seconds()) + 5; grace < budget {
		t.Errorf("terminationGracePeriodSeconds %d < SHUTDOWN_TIMEOUT + 5 s (%d)", grace, budget)
	}
	if cfg.NATS.Replicas != 3 || cfg.Auth.DevKeys {
		t.Errorf("production manifest: NATS_REPLICAS %d, dev keys %v", cfg.NATS.Replicas, cfg.Auth.DevKeys)
	}
	checkNATSImage(t, docs(t, "kubernetes/nats.yaml"))
	docs(t, "kubernetes/kustomization.yaml")
	docs(t, "prometheus/rules.yaml")
	b, err := os.ReadFile("grafana/kgentsd-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	if !json.Valid(b) {
		t.Error("the Grafana dashboard is not valid JSON")
	}
}

// checkNATSImage: the NATS the manifests deploy is one kgentsd uses
// (streaming.MinServerVersion), or every replica would refuse it.
func checkNATSImage(t *testing.T, ds []map[string]any) {
	t.Helper()
	var floor [2]int
	if _, err := fmt.Sscanf(streaming.MinServerVersion, "%d.%d", &floor[0], &floor[1]); err != nil {
		t.Fatal(err)
	}
	tag := regexp.MustCompile(`^nats:(\d+)\.(\d+)`)
	images := 0
	for _, d := range ds {
		if d["kind"] != "StatefulSet" {
			continue
		}
		spec := d["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)
		for _, c := range spec["containers"].([]any) {
			img, _ := c.(map[string]any)["image"].(string)
			m := tag.FindStringSubmatch(img)
			if m == nil {
				continue
			}
			images++
			var major, minor int
			_, _ = fmt.Sscanf(m[1]+" "+m[2], "%d %d", &major, &minor)
			if major < floor[0] || major == floor[0] && minor < floor[1] {
				t.Errorf("kubernetes/nats.yaml deploys %s; kgentsd needs NATS >= %s", img, streaming.MinServerVersion)
			}
		}
	}
	if images == 0 {
		t.Error("kubernetes/nats.yaml: no nats:MAJOR.MINOR image in a StatefulSet")
	}
}
