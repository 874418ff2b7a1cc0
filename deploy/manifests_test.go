package deploy_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"go.yaml.in/yaml/v3"
)

// manifest is the part of a Kubernetes object these tests read.
type manifest struct {
	Kind     string `yaml:"kind"`
	Metadata struct {
		Name string `yaml:"name"`
	} `yaml:"metadata"`
	Data map[string]string `yaml:"data"`
	Spec struct {
		Template struct {
			Spec struct {
				Containers []container `yaml:"containers"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type container struct {
	Name    string   `yaml:"name"`
	Image   string   `yaml:"image"`
	Command []string `yaml:"command"`
	Env     []struct {
		Name      string `yaml:"name"`
		Value     string `yaml:"value"`
		ValueFrom *struct {
			SecretKeyRef *struct {
				Name     string `yaml:"name"`
				Key      string `yaml:"key"`
				Optional bool   `yaml:"optional"`
			} `yaml:"secretKeyRef"`
			ResourceFieldRef *struct {
				Resource string `yaml:"resource"`
				Divisor  string `yaml:"divisor"`
			} `yaml:"resourceFieldRef"`
		} `yaml:"valueFrom"`
	} `yaml:"env"`
	ReadinessProbe *probe `yaml:"readinessProbe"`
	LivenessProbe  *probe `yaml:"livenessProbe"`
}

type probe struct {
	HTTPGet *struct {
		Path string `yaml:"path"`
	} `yaml:"httpGet"`
}

// object returns the manifest of kind and name in the YAML file at path.
func object(t *testing.T, path, kind, name string) manifest {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	for {
		var m manifest
		if err := dec.Decode(&m); err != nil {
			t.Fatalf("%s has no %s %s (%v)", path, kind, name, err)
		}
		if m.Kind == kind && m.Metadata.Name == name {
			return m
		}
	}
}

// onlyContainer returns the one container of a workload.
func onlyContainer(t *testing.T, m manifest) container {
	t.Helper()
	if n := len(m.Spec.Template.Spec.Containers); n != 1 {
		t.Fatalf("%s %s has %d containers, want 1", m.Kind, m.Metadata.Name, n)
	}
	return m.Spec.Template.Spec.Containers[0]
}

// TestNATSImageIsTheModulePin: the NATS the manifests run is the release
// every test (and the cluster harness) runs: go.mod's nats-server/v2, whose
// version the linked server package reports.
func TestNATSImageIsTheModulePin(t *testing.T) {
	t.Parallel()
	image := onlyContainer(t, object(t, "kubernetes/nats.yaml", "StatefulSet", "nats")).Image
	if want := "nats:" + natsserver.VERSION + "-alpine"; image != want {
		t.Errorf("the NATS image is %s, want %s (go.mod pins nats-server v%s)", image, want, natsserver.VERSION)
	}
}

// memoryLimitInBytes reports whether c's variable name is its own
// limits.memory in bytes (the downward API's default divisor).
func memoryLimitInBytes(c container, name string) bool {
	for _, e := range c.Env {
		if e.Name == name && e.ValueFrom != nil && e.ValueFrom.ResourceFieldRef != nil {
			r := e.ValueFrom.ResourceFieldRef
			return r.Resource == "limits.memory" && (r.Divisor == "" || r.Divisor == "1")
		}
	}
	return false
}

// TestKgentsdMemoryLimit: kgentsd gets its container's memory limit in
// bytes, as KGENTS_MEMORY_LIMIT wants it (cmd/kgentsd's tests show what it
// does with it).
func TestKgentsdMemoryLimit(t *testing.T) {
	t.Parallel()
	c := onlyContainer(t, object(t, "kubernetes/kgentsd.yaml", "Deployment", "kgentsd"))
	if !memoryLimitInBytes(c, "KGENTS_MEMORY_LIMIT") {
		t.Error("KGENTS_MEMORY_LIMIT is not the container's limits.memory in bytes")
	}
}

// TestNATSStartScript runs the NATS container's entry point (start.sh in
// the ConfigMap, as the StatefulSet's command runs it) with the shell, a
// stand-in nats-server on PATH printing what it was given.
func TestNATSStartScript(t *testing.T) {
	t.Parallel()
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	c := onlyContainer(t, object(t, "kubernetes/nats.yaml", "StatefulSet", "nats"))
	if len(c.Command) != 2 || c.Command[0] != "/bin/sh" || c.Command[1] != "/etc/nats/start.sh" {
		t.Fatalf("the NATS container's command is %q, want [/bin/sh /etc/nats/start.sh]", c.Command)
	}
	if !memoryLimitInBytes(c, "NATS_MEMORY_LIMIT") {
		t.Error("NATS_MEMORY_LIMIT is not the container's limits.memory in bytes")
	}
	script := object(t, "kubernetes/nats.yaml", "ConfigMap", "nats-config").Data["start.sh"]
	bin := t.TempDir()
	fake := "#!/bin/sh\necho \"GOMEMLIMIT=$GOMEMLIMIT args=$*\"\n"
	if err := os.WriteFile(filepath.Join(bin, "nats-server"), []byte(fake), 0o755); err != nil {
		t.Fatal(err)
	}
	scriptPath := filepath.Join(t.TempDir(), "start.sh")
	if err := os.WriteFile(scriptPath, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		env  []string
		want string // output; "" means the script must fail
	}{
		{"90% of the limit", []string{"NATS_MEMORY_LIMIT=2147483648"}, "GOMEMLIMIT=1932735276 args=--config /etc/nats/nats.conf"},
		{"GOMEMLIMIT wins", []string{"NATS_MEMORY_LIMIT=2147483648", "GOMEMLIMIT=1GiB"}, "GOMEMLIMIT=1GiB args=--config /etc/nats/nats.conf"},
		{"no limit is an error", nil, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cmd := exec.Command(sh, scriptPath)
			cmd.Env = append([]string{"PATH=" + bin + ":/usr/bin:/bin"}, tc.env...)
			out, err := cmd.CombinedOutput()
			got := strings.TrimSpace(string(out))
			switch {
			case tc.want == "" && err == nil:
				t.Errorf("start.sh succeeded without NATS_MEMORY_LIMIT: %s", got)
			case tc.want == "" && !strings.Contains(got, "NATS_MEMORY_LIMIT"):
				t.Errorf("start.sh failed without naming NATS_MEMORY_LIMIT: %s", got)
			case tc.want != "" && (err != nil || got != tc.want):
				t.Errorf("start.sh printed %q (%v), want %q", got, err, tc.want)
			}
		})
	}
}

// TestDockerignore: the image's build context leaves out local builds, the
// local data directory (store and spool) and the filled-in Secrets.
func TestDockerignore(t *testing.T) {
	t.Parallel()
	lines := map[string]bool{}
	for _, l := range strings.Split(read(t, "../.dockerignore"), "\n") {
		lines[strings.TrimSpace(l)] = true
	}
	for _, want := range []string{"bin/", "data/", "deploy/kubernetes/secrets/"} {
		if !lines[want] {
			t.Errorf(".dockerignore does not exclude %s", want)
		}
	}
}
