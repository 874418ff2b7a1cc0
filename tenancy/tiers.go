// Package tenancy owns who is calling: API keys (stored only as SHA-256
// hashes), the tenants they belong to, the tiers and limits of those tenants,
// and the caller's Identity carried in the request context. It also holds the
// one budget policy table shared by the Soul service and AGENTESE.
package tenancy

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/kgents/kgents-go/apijson"
	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
)

// Tier is a tenant's subscription tier.
type Tier string

// The tiers.
const (
	TierFree       Tier = "free"
	TierPro        Tier = "pro"
	TierEnterprise Tier = "enterprise"
)

// ParseTier reads a tier name case-insensitively ("PRO" as the Python keys wrote it).
func ParseTier(s string) (Tier, error) {
	switch t := Tier(strings.ToLower(strings.TrimSpace(s))); t {
	case TierFree, TierPro, TierEnterprise:
		return t, nil
	}
	return "", fmt.Errorf("unknown tier %q (free, pro, enterprise)", s)
}

// Limits are what a tier (or a key) allows. A zero count means unlimited.
type Limits struct {
	RequestsPerMinute int64
	RequestsPerDay    int64
	TokensPerMonth    int64
	// Budgets the tier may use, and the one used when a request names none.
	Budgets       []soulv1.Budget
	DefaultBudget soulv1.Budget
}

// AllowsBudget is the budget policy: may a caller with these limits use b?
func (l Limits) AllowsBudget(b soulv1.Budget) bool {
	return slices.Contains(l.Budgets, b)
}

// BudgetNames lists the allowed budgets for error messages ("dormant, whisper").
func (l Limits) BudgetNames() string {
	names := make([]string, len(l.Budgets))
	for i, b := range l.Budgets {
		names[i] = apijson.EnumString(b)
	}
	return strings.Join(names, ", ")
}

// Narrow returns l with every count tightened by k's non-zero counts. Keys
// may narrow their tenant's limits, never widen them.
func (l Limits) Narrow(k KeyLimits) Limits {
	out := l
	out.Budgets = slices.Clone(l.Budgets)
	out.RequestsPerMinute = narrow(l.RequestsPerMinute, k.RequestsPerMinute)
	out.RequestsPerDay = narrow(l.RequestsPerDay, k.RequestsPerDay)
	out.TokensPerMonth = narrow(l.TokensPerMonth, k.TokensPerMonth)
	return out
}

func narrow(tier, key int64) int64 {
	switch {
	case key <= 0:
		return tier
	case tier <= 0:
		return key
	default:
		return min(tier, key)
	}
}

// Tiers maps each tier to its limits.
type Tiers map[Tier]Limits

var allBudgets = []soulv1.Budget{soulv1.Budget_BUDGET_DORMANT, soulv1.Budget_BUDGET_WHISPER, soulv1.Budget_BUDGET_DIALOGUE, soulv1.Budget_BUDGET_DEEP}

// DefaultTiers are the limits of SPEC §4.2.
func DefaultTiers() Tiers {
	return Tiers{
		TierFree: {
			RequestsPerMinute: 60, RequestsPerDay: 100, TokensPerMonth: 10_000,
			Budgets:       allBudgets[:2],
			DefaultBudget: soulv1.Budget_BUDGET_WHISPER,
		},
		TierPro: {
			RequestsPerMinute: 600, RequestsPerDay: 1_000, TokensPerMonth: 100_000,
			Budgets:       allBudgets[:3],
			DefaultBudget: soulv1.Budget_BUDGET_DIALOGUE,
		},
		TierEnterprise: {
			RequestsPerMinute: 6_000, RequestsPerDay: 10_000, TokensPerMonth: 0,
			Budgets:       allBudgets[:4],
			DefaultBudget: soulv1.Budget_BUDGET_DEEP,
		},
	}
}

// tierFile is one tier's entry in KGENTS_TIERS_FILE; absent fields keep
// their defaults.
type tierFile struct {
	RequestsPerMinute *int64    `json:"requests_per_minute"`
	RequestsPerDay    *int64    `json:"requests_per_day"`
	TokensPerMonth    *int64    `json:"tokens_per_month"`
	Budgets           *[]string `json:"budgets"`
	DefaultBudget     *string   `json:"default_budget"`
}

// LoadTiers returns DefaultTiers overridden by the JSON file at path (if
// any), for example {"free": {"requests_per_minute": 5}}.
func LoadTiers(path string) (Tiers, error) {
	tiers := DefaultTiers()
	if path == "" {
		return tiers, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("KGENTS_TIERS_FILE: %w", err)
	}
	defer func() { _ = f.Close() }()
	var file map[string]tierFile
	dec := json.NewDecoder(f)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&file); err != nil {
		return nil, fmt.Errorf("KGENTS_TIERS_FILE %s: %w", path, err)
	}
	for name, tf := range file {
		tier, err := ParseTier(name)
		if err != nil {
			return nil, fmt.Errorf("KGENTS_TIERS_FILE %s: %w", path, err)
		}
		l := tiers[tier]
		for _, c := range []struct {
			src *int64
			dst *int64
			key string
		}{
			{tf.RequestsPerMinute, &l.RequestsPerMinute, "requests_per_minute"},
			{tf.RequestsPerDay, &l.RequestsPerDay, "requests_per_day"},
			{tf.TokensPerMonth, &l.TokensPerMonth, "tokens_per_month"},
		} {
			if c.src == nil {
				continue
			}
			if *c.src < 0 {
				return nil, fmt.Errorf("KGENTS_TIERS_FILE %s: %s.%s must not be negative", path, name, c.key)
			}
			*c.dst = *c.src
		}
		if tf.Budgets != nil {
			l.Budgets = nil
			for _, s := range *tf.Budgets {
				b, err := parseBudget(s)
				if err != nil {
					return nil, fmt.Errorf("KGENTS_TIERS_FILE %s: %s.budgets: %w", path, name, err)
				}
				l.Budgets = append(l.Budgets, b)
			}
		}
		if tf.DefaultBudget != nil {
			b, err := parseBudget(*tf.DefaultBudget)
			if err != nil {
				return nil, fmt.Errorf("KGENTS_TIERS_FILE %s: %s.default_budget: %w", path, name, err)
			}
			l.DefaultBudget = b
		}
		if !l.AllowsBudget(l.DefaultBudget) {
			if len(l.Budgets) == 0 {
				return nil, fmt.Errorf("KGENTS_TIERS_FILE %s: %s allows no budget", path, name)
			}
			// The default must be usable: take the largest allowed budget.
			l.DefaultBudget = slices.Max(l.Budgets)
		}
		tiers[tier] = l
	}
	return tiers, nil
}

func parseBudget(s string) (soulv1.Budget, error) {
	n, ok := apijson.ParseEnum(soulv1.Budget(0).Descriptor(), s)
	if !ok || n == 0 {
		return 0, fmt.Errorf("unknown budget %q (%s)", s, apijson.EnumValues(soulv1.Budget(0).Descriptor()))
	}
	return soulv1.Budget(n), nil
}
