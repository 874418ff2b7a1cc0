// Command k8scheck checks kustomizations offline, as an API server would see
// them: it builds each directory the way `kustomize build` does (the
// kustomize API, krusty), decodes every object strictly into the Kubernetes
// API types — an unknown, misspelt or duplicated field fails, and so does a
// kind it does not know — and checks that the objects fit together (see
// check.go): every referenced Secret, ConfigMap and key exists, every
// selector selects a pod, every pod meets the Pod Security profile its
// namespace enforces, and so on. `make test-manifests` runs it on
// deploy/kubernetes and deploy/kubernetes/secrets.
//
// A file NAME.example stands in for a missing NAME, so the Secret templates
// (secrets/*.example) are built and checked without real secrets.
//
//	k8scheck [-print] DIR...
//
// -print writes the built objects to stdout, as `kustomize build` would.
// It has its own module (tools/k8scheck/go.mod) to keep the Kubernetes
// libraries out of kgentsd's.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/runtime"
	kjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

func main() {
	printYAML := flag.Bool("print", false, "write the built objects to stdout")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: k8scheck [-print] DIR...")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	out := io.Discard
	if *printYAML {
		out = os.Stdout
	}
	objs, err := load(flag.Args(), out)
	if err != nil {
		fmt.Fprintln(os.Stderr, "k8scheck:", err)
		os.Exit(1)
	}
	if problems := check(objs); len(problems) > 0 {
		fmt.Fprintf(os.Stderr, "k8scheck: %d problems in %s:\n", len(problems), strings.Join(flag.Args(), ", "))
		for _, p := range problems {
			fmt.Fprintln(os.Stderr, "  "+p)
		}
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "k8scheck: %d objects from %s build, decode strictly and fit together\n", len(objs), strings.Join(flag.Args(), ", "))
}

// object is one built and decoded object.
type object struct {
	dir string         // the kustomization it came from
	obj runtime.Object // a pointer to a k8s.io/api type
}

// decoder decodes YAML strictly into the kinds the manifests may use.
var decoder = func() runtime.Decoder {
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		corev1.AddToScheme, appsv1.AddToScheme, policyv1.AddToScheme,
		autoscalingv2.AddToScheme, networkingv1.AddToScheme,
	} {
		if err := add(scheme); err != nil {
			panic(err) // a programming error: the scheme is fixed
		}
	}
	return kjson.NewSerializerWithOptions(kjson.DefaultMetaFactory, scheme, scheme,
		kjson.SerializerOptions{Yaml: true, Strict: true})
}()

// load builds every directory, writes the built YAML to out, and decodes it.
func load(dirs []string, out io.Writer) ([]object, error) {
	var objs []object
	var errs []error
	for _, dir := range dirs {
		yamls, err := build(dir)
		if err != nil {
			errs = append(errs, fmt.Errorf("kustomize build %s: %w", dir, err))
			continue
		}
		for _, y := range yamls {
			_, _ = fmt.Fprintf(out, "---\n%s", y)
			obj, err := decode(y)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", dir, err))
				continue
			}
			objs = append(objs, object{dir: dir, obj: obj})
		}
	}
	return objs, errors.Join(errs...)
}

// build runs kustomize on dir, with NAME.example standing in for a missing
// NAME, and returns each object's YAML.
func build(dir string) ([][]byte, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	mem := filesys.MakeFsInMemory()
	err = filepath.WalkDir(abs, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return mem.MkdirAll(path)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if err := mem.WriteFile(path, b); err != nil {
			return err
		}
		if real, ok := strings.CutSuffix(path, ".example"); ok {
			if _, err := os.Stat(real); errors.Is(err, fs.ErrNotExist) {
				return mem.WriteFile(real, b)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	rm, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(mem, abs)
	if err != nil {
		return nil, err
	}
	var out [][]byte
	for _, r := range rm.Resources() {
		y, err := r.AsYAML()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", r.CurId(), err)
		}
		out = append(out, y)
	}
	return out, nil
}

// decode decodes one object strictly: unknown and duplicate fields fail.
func decode(y []byte) (runtime.Object, error) {
	obj, gvk, err := decoder.Decode(y, nil, nil)
	if err != nil {
		what := "an object"
		if gvk != nil && gvk.Kind != "" {
			what = gvk.Kind
		}
		if m := metadataName.FindSubmatch(y); m != nil {
			what += "/" + string(m[1])
		}
		return nil, fmt.Errorf("%s does not decode strictly: %w", what, err)
	}
	return obj, nil
}

// metadataName finds an object's name in YAML that did not decode.
var metadataName = regexp.MustCompile(`(?m)^  name: (\S+)`)
