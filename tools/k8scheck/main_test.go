package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDeployManifests checks what `make test-manifests` checks: the shipped
// kustomizations, the Secret templates standing in for the Secrets.
func TestDeployManifests(t *testing.T) {
	t.Parallel()
	objs, err := load([]string{"../../deploy/kubernetes", "../../deploy/kubernetes/secrets"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if problems := check(objs); len(problems) > 0 {
		t.Errorf("problems:\n%s", strings.Join(problems, "\n"))
	}
	kinds := map[string]int{}
	for _, o := range objs {
		kinds[o.obj.GetObjectKind().GroupVersionKind().Kind]++
	}
	for kind, n := range map[string]int{"Namespace": 1, "Secret": 4, "NetworkPolicy": 2, "StatefulSet": 1, "Deployment": 1} {
		if kinds[kind] != n {
			t.Errorf("%d %s objects, want %d (all: %v)", kinds[kind], kind, n, kinds)
		}
	}
}

// good is a small kustomization that passes every check; each case of
// TestProblemsAreFound breaks one thing in it.
const good = `apiVersion: v1
kind: Namespace
metadata: {name: app, labels: {pod-security.kubernetes.io/enforce: restricted}}
---
apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData: {token: x}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      securityContext: {runAsNonRoot: true, runAsUser: 1000, seccompProfile: {type: RuntimeDefault}}
      containers:
        - name: web
          image: web:1
          ports: [{name: http, containerPort: 8080}]
          env:
            - name: TOKEN
              valueFrom: {secretKeyRef: {name: creds, key: token}}
            - name: MEMORY_LIMIT
              valueFrom: {resourceFieldRef: {resource: limits.memory}}
          readinessProbe: {httpGet: {path: /, port: http}}
          resources: {requests: {cpu: 100m, memory: 64Mi}, limits: {memory: 64Mi}}
          securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{ports: [{port: 8080}]}]
`

func TestProblemsAreFound(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		old, new string // one replacement in good
		want     []string
	}{
		{"nothing wrong", "", "", nil},
		{"unknown field", "  selector: {matchLabels: {app: web}}", "  replicaz: 2\n  selector: {matchLabels: {app: web}}",
			[]string{`Deployment/web does not decode strictly`, `unknown field "spec.replicaz"`}},
		{"field in the wrong case", "readOnlyRootFilesystem: true", "readOnlyRootFileSystem: true",
			[]string{`unknown field "spec.template.spec.containers[0].securityContext.readOnlyRootFileSystem"`}},
		{"unknown kind", "---\napiVersion: v1\nkind: Service", "---\napiVersion: example.com/v1\nkind: Frobnicator\nmetadata: {name: f}\n---\napiVersion: v1\nkind: Service",
			[]string{`Frobnicator/f does not decode strictly`}},
		{"missing Secret", "{name: creds, key: token}", "{name: credz, key: token}",
			[]string{"Deployment app/web: uses Secret app/credz, which none of the kustomizations makes", "Secret app/creds: is not used by any pod"}},
		{"missing key", "{name: creds, key: token}", "{name: creds, key: tokn}",
			[]string{`Deployment app/web: uses key "tokn" of Secret app/creds, which has only token`}},
		{"policy selecting nothing", "podSelector: {matchLabels: {app: web}}", "podSelector: {matchLabels: {app: nats}}",
			[]string{"NetworkPolicy app/web: selects no pod", "Deployment app/web: no NetworkPolicy limits who may connect to its pods"}},
		{"policy port not exposed", "ports: [{port: 8080}]", "ports: [{port: 4222}]",
			[]string{"NetworkPolicy app/web: allows port 4222 to Deployment app/web, which does not expose it"}},
		{"Service port not exposed", "targetPort: http", "targetPort: web",
			[]string{`Service app/web: port "http" targets web, which Deployment app/web does not expose`}},
		{"capabilities kept", "drop: [ALL]", "drop: [NET_RAW]",
			[]string{"Deployment app/web: container web: does not drop ALL capabilities"}},
		{"root allowed", "runAsNonRoot: true, runAsUser: 1000", "runAsUser: 0",
			[]string{"container web: does not set runAsNonRoot: true", "container web: runs as user 0"}},
		{"no memory limit", ", limits: {memory: 64Mi}", "",
			[]string{"container web: MEMORY_LIMIT comes from limits.memory, which is not set", "container web: has no limits.memory"}},
		{"writable root", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false",
			[]string{"container web: does not set readOnlyRootFilesystem: true"}},
		{"mount without a volume", "          readinessProbe:", "          volumeMounts: [{name: data, mountPath: /d}]\n          readinessProbe:",
			[]string{`container web: mounts volume "data", which the pod does not have`}},
		{"probe on an unnamed port", "port: http}}", "port: health}}",
			[]string{`container web: a probe uses port "health", which the container does not name`}},
		{"no Namespace object", "apiVersion: v1\nkind: Namespace\nmetadata: {name: app, labels: {pod-security.kubernetes.io/enforce: restricted}}\n---\n", "",
			[]string{"Deployment app/web: is in namespace app, which no Namespace object creates"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			manifest := good
			if tc.old != "" {
				if !strings.Contains(good, tc.old) {
					t.Fatalf("the fixture has no %q", tc.old)
				}
				manifest = strings.Replace(good, tc.old, tc.new, 1)
			}
			dir := t.TempDir()
			write(t, filepath.Join(dir, "kustomization.yaml"), "namespace: app\nresources: [all.yaml]\n")
			write(t, filepath.Join(dir, "all.yaml"), manifest)
			objs, err := load([]string{dir}, io.Discard)
			var got []string
			if err != nil {
				got = append(got, err.Error())
			}
			got = append(got, check(objs)...)
			all := strings.Join(got, "\n")
			if tc.want == nil && all != "" {
				t.Fatalf("problems in the good fixture:\n%s", all)
			}
			for _, w := range tc.want {
				if !strings.Contains(all, w) {
					t.Errorf("no problem says %q; got:\n%s", w, all)
				}
			}
		})
	}
}

// TestExampleStandsInForAMissingFile: a secretGenerator reading NAME is
// built from NAME.example when NAME is missing, and from NAME when it exists.
func TestExampleStandsInForAMissingFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write(t, filepath.Join(dir, "kustomization.yaml"), "secretGenerator:\n  - name: s\n    files: [token]\n")
	write(t, filepath.Join(dir, "token.example"), "from the example")
	check := func(want string) {
		t.Helper()
		yamls, err := build(dir)
		if err != nil {
			t.Fatal(err)
		}
		if len(yamls) != 1 || !strings.Contains(string(yamls[0]), want) {
			t.Errorf("built %q, want the Secret with %q", yamls, want)
		}
	}
	check("ZnJvbSB0aGUgZXhhbXBsZQ==") // base64 of "from the example"
	write(t, filepath.Join(dir, "token"), "the real one")
	check("dGhlIHJlYWwgb25l")
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
