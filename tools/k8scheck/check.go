package main

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// pod is a pod template and where it comes from.
type pod struct {
	owner  string // "StatefulSet kgents/nats"
	kind   string
	name   string
	ns     string
	labels map[string]string
	spec   *corev1.PodSpec
	claims map[string]bool // volumeClaimTemplates' names
}

// checker holds the objects by kind and collects problems.
type checker struct {
	namespaces map[string]*corev1.Namespace
	secrets    map[string]*corev1.Secret // by namespace/name
	configMaps map[string]*corev1.ConfigMap
	services   map[string]*corev1.Service
	netpols    map[string][]*networkingv1.NetworkPolicy // by namespace
	pods       []pod
	used       map[string]bool // "Secret ns/name", "ConfigMap ns/name" referenced by a pod
	problems   []string
}

func (c *checker) fail(who, format string, args ...any) {
	c.problems = append(c.problems, who+": "+fmt.Sprintf(format, args...))
}

// check returns every way objs do not fit together, each naming its object.
func check(objs []object) []string {
	c := &checker{
		namespaces: map[string]*corev1.Namespace{},
		secrets:    map[string]*corev1.Secret{},
		configMaps: map[string]*corev1.ConfigMap{},
		services:   map[string]*corev1.Service{},
		netpols:    map[string][]*networkingv1.NetworkPolicy{},
		used:       map[string]bool{},
	}
	for _, o := range objs {
		m, err := meta.Accessor(o.obj)
		if err != nil {
			c.fail(fmt.Sprintf("%T", o.obj), "has no metadata: %v", err)
			continue
		}
		key := m.GetNamespace() + "/" + m.GetName()
		switch x := o.obj.(type) {
		case *corev1.Namespace:
			c.namespaces[m.GetName()] = x
		case *corev1.Secret:
			c.secrets[key] = x
		case *corev1.ConfigMap:
			c.configMaps[key] = x
		case *corev1.Service:
			c.services[key] = x
		case *networkingv1.NetworkPolicy:
			c.netpols[x.Namespace] = append(c.netpols[x.Namespace], x)
		case *appsv1.Deployment:
			c.pods = append(c.pods, pod{kind: "Deployment", name: x.Name, ns: x.Namespace, labels: x.Spec.Template.Labels, spec: &x.Spec.Template.Spec})
		case *appsv1.StatefulSet:
			p := pod{kind: "StatefulSet", name: x.Name, ns: x.Namespace, labels: x.Spec.Template.Labels, spec: &x.Spec.Template.Spec, claims: map[string]bool{}}
			for _, t := range x.Spec.VolumeClaimTemplates {
				p.claims[t.Name] = true
			}
			c.pods = append(c.pods, p)
		}
	}
	for i := range c.pods {
		c.pods[i].owner = fmt.Sprintf("%s %s/%s", c.pods[i].kind, c.pods[i].ns, c.pods[i].name)
	}

	for _, o := range objs {
		m, _ := meta.Accessor(o.obj)
		if m == nil {
			continue
		}
		kind := o.obj.GetObjectKind().GroupVersionKind().Kind
		who := fmt.Sprintf("%s %s/%s", kind, m.GetNamespace(), m.GetName())
		if kind == "Namespace" {
			continue
		}
		if m.GetNamespace() == "" {
			c.fail(who, "has no namespace (set `namespace:` in the kustomization)")
		} else if c.namespaces[m.GetNamespace()] == nil {
			c.fail(who, "is in namespace %s, which no Namespace object creates", m.GetNamespace())
		}
		switch x := o.obj.(type) {
		case *corev1.Service:
			c.service(who, x)
		case *appsv1.StatefulSet:
			if s := c.services[x.Namespace+"/"+x.Spec.ServiceName]; s == nil || s.Spec.ClusterIP != corev1.ClusterIPNone {
				c.fail(who, "serviceName %q is not a headless Service (clusterIP: None) in its namespace", x.Spec.ServiceName)
			}
		case *policyv1.PodDisruptionBudget:
			if len(c.selected(who, x.Namespace, x.Spec.Selector)) == 0 {
				c.fail(who, "selects no pod")
			}
		case *autoscalingv2.HorizontalPodAutoscaler:
			c.hpa(who, x)
		case *networkingv1.NetworkPolicy:
			c.networkPolicy(who, x)
		}
	}
	for _, p := range c.pods {
		c.pod(p)
	}
	for key := range c.secrets {
		if !c.used["Secret "+key] {
			c.fail("Secret "+key, "is not used by any pod")
		}
	}
	for key := range c.configMaps {
		if !c.used["ConfigMap "+key] {
			c.fail("ConfigMap "+key, "is not used by any pod")
		}
	}
	sort.Strings(c.problems)
	return c.problems
}

// selected returns the pods in ns that sel selects.
func (c *checker) selected(who, ns string, sel *metav1.LabelSelector) []pod {
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		c.fail(who, "has an invalid selector: %v", err)
		return nil
	}
	var out []pod
	for _, p := range c.pods {
		if p.ns == ns && s.Matches(labels.Set(p.labels)) {
			out = append(out, p)
		}
	}
	return out
}

func (c *checker) service(who string, s *corev1.Service) {
	if len(s.Spec.Selector) == 0 {
		c.fail(who, "has no selector")
		return
	}
	pods := c.selected(who, s.Namespace, &metav1.LabelSelector{MatchLabels: s.Spec.Selector})
	if len(pods) == 0 {
		c.fail(who, "selects no pod")
	}
	for _, port := range s.Spec.Ports {
		target := port.TargetPort
		if target.Type == intstr.Int && target.IntVal == 0 {
			target = intstr.FromInt32(port.Port)
		}
		for _, p := range pods {
			if !hasPort(p.spec, target) {
				c.fail(who, "port %q targets %s, which %s does not expose", port.Name, target.String(), p.owner)
			}
		}
	}
}

// hasPort reports whether a container of spec exposes port (a number or a name).
func hasPort(spec *corev1.PodSpec, port intstr.IntOrString) bool {
	for _, ctr := range spec.Containers {
		for _, cp := range ctr.Ports {
			if port.Type == intstr.String && cp.Name == port.StrVal || port.Type == intstr.Int && cp.ContainerPort == port.IntVal {
				return true
			}
		}
	}
	return false
}

func (c *checker) hpa(who string, h *autoscalingv2.HorizontalPodAutoscaler) {
	ref := h.Spec.ScaleTargetRef
	var target *pod
	for i, p := range c.pods {
		if p.ns == h.Namespace && p.kind == ref.Kind && p.name == ref.Name {
			target = &c.pods[i]
		}
	}
	if target == nil {
		c.fail(who, "scales %s %s, which does not exist in its namespace", ref.Kind, ref.Name)
		return
	}
	for _, m := range h.Spec.Metrics {
		if m.Resource == nil || m.Resource.Target.Type != autoscalingv2.UtilizationMetricType {
			continue
		}
		for _, ctr := range target.spec.Containers {
			if _, ok := ctr.Resources.Requests[m.Resource.Name]; !ok {
				c.fail(who, "scales on %s utilization, but container %s of %s requests no %s", m.Resource.Name, ctr.Name, target.owner, m.Resource.Name)
			}
		}
	}
}

func (c *checker) networkPolicy(who string, np *networkingv1.NetworkPolicy) {
	pods := c.selected(who, np.Namespace, &np.Spec.PodSelector)
	if len(pods) == 0 {
		c.fail(who, "selects no pod")
	}
	for _, rule := range np.Spec.Ingress {
		for _, port := range rule.Ports {
			if port.Port == nil {
				continue
			}
			for _, p := range pods {
				if !hasPort(p.spec, *port.Port) {
					c.fail(who, "allows port %s to %s, which does not expose it", port.Port.String(), p.owner)
				}
			}
		}
	}
}

// pod checks one pod template: references, hardening, and the Pod Security
// profile its namespace enforces.
func (c *checker) pod(p pod) {
	spec := p.spec
	volumes := maps.Clone(p.claims)
	if volumes == nil {
		volumes = map[string]bool{}
	}
	for _, v := range spec.Volumes {
		volumes[v.Name] = true
		switch {
		case v.Secret != nil:
			c.needKeys(p, "Secret", v.Secret.SecretName, itemKeys(v.Secret.Items), v.Secret.Optional)
		case v.ConfigMap != nil:
			c.needKeys(p, "ConfigMap", v.ConfigMap.Name, itemKeys(v.ConfigMap.Items), v.ConfigMap.Optional)
		case v.Projected != nil:
			for _, src := range v.Projected.Sources {
				if src.Secret != nil {
					c.needKeys(p, "Secret", src.Secret.Name, itemKeys(src.Secret.Items), src.Secret.Optional)
				}
				if src.ConfigMap != nil {
					c.needKeys(p, "ConfigMap", src.ConfigMap.Name, itemKeys(src.ConfigMap.Items), src.ConfigMap.Optional)
				}
			}
		}
	}
	if ns := c.namespaces[p.ns]; ns != nil && ns.Labels["pod-security.kubernetes.io/enforce"] == "restricted" {
		c.restricted(p)
	}
	covered := false
	for _, np := range c.netpols[p.ns] {
		s, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
		if err == nil && s.Matches(labels.Set(p.labels)) && (len(np.Spec.PolicyTypes) == 0 || slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress)) {
			covered = true
		}
	}
	if !covered {
		c.fail(p.owner, "no NetworkPolicy limits who may connect to its pods")
	}
	for _, ctr := range slices.Concat(spec.InitContainers, spec.Containers) {
		who := fmt.Sprintf("%s: container %s", p.owner, ctr.Name)
		for _, m := range ctr.VolumeMounts {
			if !volumes[m.Name] {
				c.fail(who, "mounts volume %q, which the pod does not have", m.Name)
			}
		}
		for _, e := range ctr.EnvFrom {
			if e.SecretRef != nil {
				c.needKeys(p, "Secret", e.SecretRef.Name, nil, e.SecretRef.Optional)
			}
			if e.ConfigMapRef != nil {
				c.needKeys(p, "ConfigMap", e.ConfigMapRef.Name, nil, e.ConfigMapRef.Optional)
			}
		}
		for _, e := range ctr.Env {
			switch from := e.ValueFrom; {
			case from == nil:
			case from.SecretKeyRef != nil:
				c.needKeys(p, "Secret", from.SecretKeyRef.Name, []string{from.SecretKeyRef.Key}, from.SecretKeyRef.Optional)
			case from.ConfigMapKeyRef != nil:
				c.needKeys(p, "ConfigMap", from.ConfigMapKeyRef.Name, []string{from.ConfigMapKeyRef.Key}, from.ConfigMapKeyRef.Optional)
			case from.ResourceFieldRef != nil:
				// Without the resource set, the downward API gives the node's
				// capacity instead: not what a variable named after the limit means.
				ref := from.ResourceFieldRef
				of := ctr
				if ref.ContainerName != "" && ref.ContainerName != ctr.Name {
					of = corev1.Container{}
					for _, other := range spec.Containers {
						if other.Name == ref.ContainerName {
							of = other
						}
					}
				}
				if !hasResource(of.Resources, ref.Resource) {
					c.fail(who, "%s comes from %s, which is not set", e.Name, ref.Resource)
				}
			}
		}
		for _, probe := range []*corev1.Probe{ctr.ReadinessProbe, ctr.LivenessProbe, ctr.StartupProbe} {
			if probe == nil {
				continue
			}
			var port *intstr.IntOrString
			switch {
			case probe.HTTPGet != nil:
				port = &probe.HTTPGet.Port
			case probe.TCPSocket != nil:
				port = &probe.TCPSocket.Port
			}
			if port != nil && port.Type == intstr.String && !hasPort(&corev1.PodSpec{Containers: []corev1.Container{ctr}}, *port) {
				c.fail(who, "a probe uses port %q, which the container does not name", port.StrVal)
			}
		}
		// Our bar beyond Pod Security: bounded, and nothing written outside volumes.
		r := ctr.Resources
		for _, need := range []string{"requests.cpu", "requests.memory", "limits.memory"} {
			if !hasResource(r, need) {
				c.fail(who, "has no %s", need)
			}
		}
		if sc := ctr.SecurityContext; sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			c.fail(who, "does not set readOnlyRootFilesystem: true")
		}
	}
}

func itemKeys(items []corev1.KeyToPath) []string {
	var keys []string
	for _, it := range items {
		keys = append(keys, it.Key)
	}
	return keys
}

// hasResource reports whether r sets resource, e.g. "limits.memory".
func hasResource(r corev1.ResourceRequirements, resource string) bool {
	kind, name, ok := strings.Cut(resource, ".")
	if !ok {
		return false
	}
	var list corev1.ResourceList
	switch kind {
	case "limits":
		list = r.Limits
	case "requests":
		list = r.Requests
	}
	_, set := list[corev1.ResourceName(name)]
	return set
}

// needKeys records that p uses kind/name and reports it (or one of keys in
// it) missing, unless the reference is optional.
func (c *checker) needKeys(p pod, kind, name string, keys []string, optional *bool) {
	key := p.ns + "/" + name
	c.used[kind+" "+key] = true
	if optional != nil && *optional {
		return
	}
	var have map[string]bool
	switch kind {
	case "Secret":
		if s := c.secrets[key]; s != nil {
			have = map[string]bool{}
			for k := range s.Data {
				have[k] = true
			}
			for k := range s.StringData {
				have[k] = true
			}
		}
	case "ConfigMap":
		if m := c.configMaps[key]; m != nil {
			have = map[string]bool{}
			for k := range m.Data {
				have[k] = true
			}
			for k := range m.BinaryData {
				have[k] = true
			}
		}
	}
	if have == nil {
		c.fail(p.owner, "uses %s %s, which none of the kustomizations makes", kind, key)
		return
	}
	for _, k := range keys {
		if !have[k] {
			c.fail(p.owner, "uses key %q of %s %s, which has only %s", k, kind, key, strings.Join(slices.Sorted(maps.Keys(have)), ", "))
		}
	}
}

// restricted checks the Pod Security Standard's "restricted" profile
// (kubernetes.io/docs/concepts/security/pod-security-standards).
func (c *checker) restricted(p pod) {
	spec := p.spec
	if spec.HostNetwork || spec.HostPID || spec.HostIPC {
		c.fail(p.owner, "shares the host's network, PID or IPC namespace")
	}
	psc := spec.SecurityContext
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	for _, v := range spec.Volumes {
		ok := v.ConfigMap != nil || v.CSI != nil || v.DownwardAPI != nil || v.EmptyDir != nil || v.Ephemeral != nil ||
			v.PersistentVolumeClaim != nil || v.Projected != nil || v.Secret != nil
		if !ok {
			c.fail(p.owner, "volume %q is of a type the restricted profile forbids", v.Name)
		}
	}
	for _, ctr := range slices.Concat(spec.InitContainers, spec.Containers) {
		who := fmt.Sprintf("%s: container %s", p.owner, ctr.Name)
		sc := ctr.SecurityContext
		if sc == nil {
			sc = &corev1.SecurityContext{}
		}
		if sc.Privileged != nil && *sc.Privileged {
			c.fail(who, "is privileged")
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			c.fail(who, "does not set allowPrivilegeEscalation: false")
		}
		if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
			c.fail(who, "does not drop ALL capabilities")
		}
		if sc.Capabilities != nil {
			for _, add := range sc.Capabilities.Add {
				if add != "NET_BIND_SERVICE" {
					c.fail(who, "adds capability %s (only NET_BIND_SERVICE is allowed)", add)
				}
			}
		}
		nonRoot := psc.RunAsNonRoot != nil && *psc.RunAsNonRoot
		if sc.RunAsNonRoot != nil {
			nonRoot = *sc.RunAsNonRoot
		}
		if !nonRoot {
			c.fail(who, "does not set runAsNonRoot: true (on the pod or the container)")
		}
		user := psc.RunAsUser
		if sc.RunAsUser != nil {
			user = sc.RunAsUser
		}
		if user != nil && *user == 0 {
			c.fail(who, "runs as user 0")
		}
		seccomp := psc.SeccompProfile
		if sc.SeccompProfile != nil {
			seccomp = sc.SeccompProfile
		}
		if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault && seccomp.Type != corev1.SeccompProfileTypeLocalhost {
			c.fail(who, "has no seccompProfile RuntimeDefault (or Localhost)")
		}
		for _, port := range ctr.Ports {
			if port.HostPort != 0 {
				c.fail(who, "uses host port %d", port.HostPort)
			}
		}
	}
}
