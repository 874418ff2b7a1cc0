package cluster

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// Placement is where one stream or consumer lives in the cluster.
type Placement struct {
	Stream   string // the stream (a KV bucket is stream KV_<bucket>)
	Consumer string // "" for the stream itself
	Replicas int    // configured (a consumer's 0 is resolved to its stream's)
	Leader   string
	Peers    []string // the other replicas, with "(lagging)"/"(offline)" marks
	Problem  string   // "" when R == want, a leader is elected and every peer is current
}

func (p Placement) String() string {
	name := p.Stream
	if p.Consumer != "" {
		name += "/" + p.Consumer
	}
	s := fmt.Sprintf("%s R%d leader=%s peers=%s", name, p.Replicas, p.Leader, strings.Join(p.Peers, ","))
	if p.Problem != "" {
		s += " PROBLEM: " + p.Problem
	}
	return s
}

// Placements reads the cluster placement of every stream whose name has one
// of prefixes (every stream when none) and of every durable consumer on it,
// from the JetStream API (stream and consumer info's cluster field), and
// judges it against want replicas.
func Placements(ctx context.Context, js jetstream.JetStream, want int, prefixes ...string) ([]Placement, error) {
	var out []Placement
	lister := js.ListStreams(ctx)
	for info := range lister.Info() {
		if !hasPrefix(info.Config.Name, prefixes) {
			continue
		}
		out = append(out, judge(info.Config.Name, "", info.Config.Replicas, info.Cluster, want))
		s, err := js.Stream(ctx, info.Config.Name)
		if err != nil {
			return out, fmt.Errorf("stream %s: %w", info.Config.Name, err)
		}
		cl := s.ListConsumers(ctx)
		for ci := range cl.Info() {
			if ci.Config.Durable == "" {
				continue // ordered/ephemeral consumers (watches, KV watchers) are R1 by design
			}
			r := ci.Config.Replicas
			if r == 0 {
				r = info.Config.Replicas
			}
			out = append(out, judge(info.Config.Name, ci.Name, r, ci.Cluster, want))
		}
		if err := cl.Err(); err != nil {
			return out, fmt.Errorf("consumers of %s: %w", info.Config.Name, err)
		}
	}
	if err := lister.Err(); err != nil {
		return out, fmt.Errorf("list streams: %w", err)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Stream != out[j].Stream {
			return out[i].Stream < out[j].Stream
		}
		return out[i].Consumer < out[j].Consumer
	})
	return out, nil
}

func hasPrefix(name string, prefixes []string) bool {
	if len(prefixes) == 0 {
		return true
	}
	for _, p := range prefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

func judge(stream, consumer string, replicas int, ci *jetstream.ClusterInfo, want int) Placement {
	p := Placement{Stream: stream, Consumer: consumer, Replicas: replicas}
	var problems []string
	if replicas != want {
		problems = append(problems, fmt.Sprintf("R%d, want R%d", replicas, want))
	}
	if ci == nil {
		problems = append(problems, "no cluster information (not clustered)")
	} else {
		p.Leader = ci.Leader
		if ci.Leader == "" {
			problems = append(problems, "no leader")
		}
		for _, peer := range ci.Replicas {
			mark := peer.Name
			switch {
			case peer.Offline:
				mark += "(offline)"
				problems = append(problems, peer.Name+" offline")
			case !peer.Current:
				mark += "(lagging)"
				problems = append(problems, fmt.Sprintf("%s not current (lag %d)", peer.Name, peer.Lag))
			}
			p.Peers = append(p.Peers, mark)
		}
		if len(ci.Replicas) != replicas-1 {
			problems = append(problems, fmt.Sprintf("%d peers beside the leader, want %d", len(ci.Replicas), replicas-1))
		}
	}
	p.Problem = strings.Join(problems, "; ")
	return p
}

// CheckReplicated returns an error naming every stream or consumer among ps
// that is not fully replicated.
func CheckReplicated(ps []Placement) error {
	var errs []error
	for _, p := range ps {
		if p.Problem != "" {
			errs = append(errs, errors.New(p.String()))
		}
	}
	return errors.Join(errs...)
}

// StreamLeader is the name of the node leading stream.
func StreamLeader(ctx context.Context, js jetstream.JetStream, stream string) (string, error) {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return "", err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return "", err
	}
	if info.Cluster == nil || info.Cluster.Leader == "" {
		return "", fmt.Errorf("stream %s has no leader", stream)
	}
	return info.Cluster.Leader, nil
}
