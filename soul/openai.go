package soul

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/packages/ssestream"

	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
)

// DefaultLLMTimeout bounds a model call when OpenAIConfig.Timeout is zero
// (LLM_TIMEOUT's default).
const DefaultLLMTimeout = 120 * time.Second

// OpenAIConfig configures NewOpenAIEngine.
type OpenAIConfig struct {
	// BaseURL of the OpenAI-compatible API, including /v1
	// (e.g. "https://api.openai.com/v1"). Required.
	BaseURL string
	// APIKey is sent as a bearer token; empty sends none (local gateways).
	APIKey string
	// Model to request. Required.
	Model string
	// Timeout bounds each call from request to last chunk. Zero means
	// DefaultLLMTimeout.
	Timeout time.Duration
	// HTTPClient to use; nil uses a client on http.DefaultTransport. Its own
	// Timeout, if any, also applies — leave it zero and rely on Timeout.
	HTTPClient *http.Client
	// Fallback answers what needs no model: the dormant budget (templates
	// only, zero tokens) and empty messages. Nil means NewTemplateEngine().
	Fallback Engine
}

// Kinds of LLMError, as reported by ErrorKind (and in SSE error events).
const (
	LLMErrorTimeout  = "timeout"
	LLMErrorCanceled = "canceled"
	LLMErrorProvider = "llm_error"
)

// LLMError is how the OpenAI engine reports a failed call. Its message is
// safe to show to API callers: it never contains the API key, a URL, or
// text from the provider's response. Kind timeout unwraps to
// context.DeadlineExceeded and canceled to context.Canceled, so errors.Is
// works on both.
type LLMError struct {
	// Kind is LLMErrorTimeout, LLMErrorCanceled or LLMErrorProvider.
	Kind string
	// Status is the provider's HTTP status when it answered with an error
	// status, else 0.
	Status int
	// Message is a human-readable, sanitised description.
	Message string

	cause error // context.DeadlineExceeded, context.Canceled or nil: never a provider error
}

func (e *LLMError) Error() string { return e.Message }

// ErrorKind reports Kind (the interface the Soul service looks for).
func (e *LLMError) ErrorKind() string { return e.Kind }

// Unwrap returns the context error behind a timeout or cancellation.
func (e *LLMError) Unwrap() error { return e.cause }

// Per-mode sampling temperature: reflection stays close to what was said,
// exploration is allowed to wander.
func temperatureFor(m soulv1.Mode) float64 {
	switch m {
	case soulv1.Mode_MODE_ADVISE:
		return 0.5
	case soulv1.Mode_MODE_CHALLENGE:
		return 0.6
	case soulv1.Mode_MODE_EXPLORE:
		return 0.8
	default:
		return 0.4
	}
}

// maxTokensFor caps a reply's length by budget.
func maxTokensFor(b soulv1.Budget) int64 {
	switch b {
	case soulv1.Budget_BUDGET_WHISPER:
		return 100
	case soulv1.Budget_BUDGET_DEEP:
		return 1000
	default:
		return 500
	}
}

// openAIEngine talks to an OpenAI-compatible chat-completions API.
type openAIEngine struct {
	chat     openai.ChatCompletionService
	model    string
	timeout  time.Duration
	fallback Engine
}

// NewOpenAIEngine returns an engine that streams replies from an
// OpenAI-compatible chat-completions endpoint with the official SDK.
//
// Behaviour: the dormant budget and empty messages go to cfg.Fallback
// without a model call. Otherwise one streamed call is made with the
// persona system prompt, the request's history and the message; every
// non-empty content delta becomes a chunk. Token counts come from the
// provider's usage report (requested with stream_options.include_usage);
// without one they are estimated and Reply.TokensEstimated is set. Failures
// are *LLMError values, returned together with the partial reply.
//
// The engine also implements Completer (used by the governor).
func NewOpenAIEngine(cfg OpenAIConfig) (Engine, error) {
	if err := validateBaseURL(cfg.BaseURL); err != nil {
		return nil, err
	}
	if strings.TrimSpace(cfg.Model) == "" {
		return nil, errors.New("soul: OpenAI engine needs a model name")
	}
	if cfg.Timeout < 0 {
		return nil, errors.New("soul: OpenAI engine timeout must not be negative")
	}
	timeout := cfg.Timeout
	if timeout == 0 {
		timeout = DefaultLLMTimeout
	}
	client := cfg.HTTPClient
	if client == nil {
		client = &http.Client{}
	}
	fallback := cfg.Fallback
	if fallback == nil {
		fallback = NewTemplateEngine()
	}
	opts := []option.RequestOption{
		option.WithBaseURL(cfg.BaseURL),
		option.WithHTTPClient(client),
		// No SDK retries. The SDK only retries before a response body is
		// read, but a retried stream is still wrong for us: hidden retries
		// with backoff would spend the caller's Timeout invisibly, and a
		// stream that failed after chunks were emitted cannot be resumed —
		// starting it again would duplicate text the client already has.
		// Callers own the retry policy.
		option.WithMaxRetries(0),
	}
	if cfg.APIKey != "" {
		opts = append(opts, option.WithAPIKey(cfg.APIKey))
	}
	return &openAIEngine{
		// The service is built directly rather than through openai.NewClient,
		// which would also read OPENAI_* environment variables (organisation,
		// project, extra headers) and send them to whatever gateway BaseURL
		// names. Configuration here is explicit.
		chat:     openai.NewChatCompletionService(opts...),
		model:    cfg.Model,
		timeout:  timeout,
		fallback: fallback,
	}, nil
}

func validateBaseURL(raw string) error {
	if strings.TrimSpace(raw) == "" {
		return errors.New("soul: OpenAI engine needs a base URL")
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		// Do not echo the URL: it may carry credentials.
		return errors.New("soul: OpenAI engine base URL must be an absolute http(s) URL")
	}
	return nil
}

// Name implements Engine.
func (*openAIEngine) Name() string { return "openai" }

// Model implements Engine.
func (e *openAIEngine) Model() string { return e.model }

// Stream implements Engine.
func (e *openAIEngine) Stream(ctx context.Context, req Request, emit func(Chunk) error) (Reply, error) {
	if req.Budget == soulv1.Budget_BUDGET_DORMANT || strings.TrimSpace(req.Message) == "" {
		return e.fallback.Stream(ctx, req, emit)
	}
	prefs, patterns := MatchPersona(req.Message)
	system := dialogueSystemPrompt(req.Mode, req.Budget, prefs, patterns)
	params := openai.ChatCompletionNewParams{
		Model:       e.model,
		Messages:    dialogueMessages(system, req),
		Temperature: openai.Float(temperatureFor(req.Mode)),
		// max_tokens rather than max_completion_tokens: every
		// OpenAI-compatible gateway understands it.
		MaxTokens:     openai.Int(maxTokensFor(req.Budget)),
		StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)},
	}
	reply := Reply{
		Mode:                  req.Mode,
		Budget:                req.Budget,
		Model:                 e.model,
		ReferencedPreferences: prefs,
		ReferencedPatterns:    patterns,
	}

	callCtx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	stream := e.chat.NewStreaming(callCtx, params)
	defer func() { _ = stream.Close() }()

	var (
		text     strings.Builder
		usage    openai.CompletionUsage
		reported bool
		finished bool
		emitErr  error
	)
read:
	for stream.Next() {
		chunk := stream.Current()
		if chunk.JSON.Usage.Valid() {
			usage, reported = chunk.Usage, true
		}
		for _, choice := range chunk.Choices {
			if choice.Index != 0 { // n is 1; ignore anything else
				continue
			}
			if choice.FinishReason != "" {
				finished = true
			}
			if choice.Delta.Content == "" {
				continue
			}
			if err := emit(Chunk{Text: choice.Delta.Content, Index: reply.Chunks}); err != nil {
				emitErr = err
				break read
			}
			text.WriteString(choice.Delta.Content)
			reply.Chunks++
		}
	}
	reply.Text = text.String()
	setTokens(&reply, reported, usage, system, req)

	switch {
	case emitErr != nil:
		return reply, emitErr
	case finished:
		// The model said it was done. A failure after that (the usage
		// chunk or [DONE] lost to a dropped connection) leaves the reply
		// whole; only the token counts fall back to estimates.
		return reply, nil
	case stream.Err() != nil:
		return reply, classify(ctx, callCtx, e.timeout, stream.Err())
	default:
		// The stream ended cleanly but without a finish_reason: the
		// provider (or a proxy) closed it before the reply was complete.
		if callCtx.Err() != nil {
			return reply, classify(ctx, callCtx, e.timeout, callCtx.Err())
		}
		return reply, &LLMError{Kind: LLMErrorProvider, Message: "the model's reply stream ended before the reply was complete"}
	}
}

// setTokens takes the provider's usage report, or estimates both sides when
// there is none (the provider ignores include_usage, or the stream failed
// before the final chunk).
func setTokens(reply *Reply, reported bool, usage openai.CompletionUsage, system string, req Request) {
	if reported {
		reply.TokensIn, reply.TokensOut = int(usage.PromptTokens), int(usage.CompletionTokens)
		return
	}
	words := countWords(system) + countWords(req.Message)
	for _, t := range req.History {
		words += countWords(t.Content)
	}
	reply.TokensIn = estimateTokens(words)
	reply.TokensOut = estimateTokens(countWords(reply.Text))
	reply.TokensEstimated = true
}

// dialogueMessages is the conversation sent to the model: system prompt,
// history (oldest first), then the message. History turns with a role other
// than user or assistant are dropped: nothing but the engine writes the
// system prompt.
func dialogueMessages(system string, req Request) []openai.ChatCompletionMessageParamUnion {
	msgs := make([]openai.ChatCompletionMessageParamUnion, 0, len(req.History)+2)
	msgs = append(msgs, openai.SystemMessage(system))
	for _, t := range req.History {
		switch t.Role {
		case "user":
			msgs = append(msgs, openai.UserMessage(t.Content))
		case "assistant":
			msgs = append(msgs, openai.AssistantMessage(t.Content))
		}
	}
	return append(msgs, openai.UserMessage(req.Message))
}

// personaPrompt is the fixed part of the dialogue system prompt.
var personaPrompt = "You are K-gent, a reflective companion: you help the person you talk with think, " +
	"rather than doing tasks for them. You know them well.\n" + personaSummary()

var modeGuidance = [...]string{
	"Mode: reflect. Mirror back what you hear so they see it more clearly; ask one good question. Do not give advice.",
	"Mode: advise. Offer concrete suggestions aligned with their values and aware of their patterns.",
	"Mode: challenge. Push back constructively on weak reasoning and comfortable assumptions; be direct, not harsh.",
	"Mode: explore. Open the possibility space: unexpected angles, connections to their interests, no premature decisions.",
}

func budgetGuidance(b soulv1.Budget) string {
	switch b {
	case soulv1.Budget_BUDGET_WHISPER:
		return "Answer in one or two short sentences."
	case soulv1.Budget_BUDGET_DEEP:
		return "Take room to think: consider several angles before you conclude, in a few paragraphs at most."
	default:
		return "Answer in a short paragraph or two."
	}
}

// dialogueSystemPrompt combines persona, eigenvectors, mode and budget
// guidance, and the persona entries this message brings up.
func dialogueSystemPrompt(mode soulv1.Mode, budget soulv1.Budget, prefs, patterns []string) string {
	var b strings.Builder
	b.Grow(len(personaPrompt) + 512)
	b.WriteString(personaPrompt)
	b.WriteString(modeGuidance[modeIndex(mode)])
	b.WriteByte('\n')
	b.WriteString(budgetGuidance(budget))
	b.WriteByte('\n')
	if len(prefs) > 0 {
		b.WriteString("Preferences this message touches: ")
		b.WriteString(strings.Join(prefs, ", "))
		b.WriteString(".\n")
	}
	if len(patterns) > 0 {
		b.WriteString("Patterns this message touches: ")
		b.WriteString(strings.Join(patterns, "; "))
		b.WriteString(".\n")
	}
	return b.String()
}

// classify turns any failure of a model call into a safe *LLMError. parent
// is the caller's context, call the one bounded by the engine's timeout.
// Nothing from err's text is kept: SDK and transport errors can carry URLs,
// headers or provider bodies.
func classify(parent, call context.Context, timeout time.Duration, err error) *LLMError {
	if perr := parent.Err(); perr != nil {
		if errors.Is(perr, context.DeadlineExceeded) {
			return &LLMError{Kind: LLMErrorTimeout, Message: "the request's deadline passed before the model finished", cause: context.DeadlineExceeded}
		}
		return &LLMError{Kind: LLMErrorCanceled, Message: "the request was canceled before the model finished", cause: context.Canceled}
	}
	if call.Err() != nil {
		return &LLMError{Kind: LLMErrorTimeout, Message: "the model did not finish within " + timeout.String(), cause: context.DeadlineExceeded}
	}
	var apiErr *openai.Error
	if errors.As(err, &apiErr) {
		return &LLMError{
			Kind:    LLMErrorProvider,
			Status:  apiErr.StatusCode,
			Message: fmt.Sprintf("the model provider answered HTTP %d %s", apiErr.StatusCode, http.StatusText(apiErr.StatusCode)),
		}
	}
	var streamErr *ssestream.StreamError
	if errors.As(err, &streamErr) {
		return &LLMError{Kind: LLMErrorProvider, Message: "the model provider reported an error during the reply"}
	}
	return &LLMError{Kind: LLMErrorProvider, Message: "the connection to the model provider failed or sent a malformed reply"}
}

// Completer is implemented by model-backed engines that can answer a
// one-off prompt with explicit settings. The governor uses it when its
// engine has it.
type Completer interface {
	Complete(ctx context.Context, p Prompt) (Completion, error)
}

// Prompt is a one-off model call.
type Prompt struct {
	System, User string
	Temperature  float64
	MaxTokens    int
}

// Completion is a Completer's answer.
type Completion struct {
	Text                string
	TokensIn, TokensOut int
	// TokensEstimated is true when the provider sent no usage report.
	TokensEstimated bool
}

// Complete implements Completer with one non-streamed call, bounded by the
// engine's timeout. Errors are *LLMError.
func (e *openAIEngine) Complete(ctx context.Context, p Prompt) (Completion, error) {
	callCtx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	params := openai.ChatCompletionNewParams{
		Model: e.model,
		Messages: []openai.ChatCompletionMessageParamUnion{
			openai.SystemMessage(p.System),
			openai.UserMessage(p.User),
		},
		Temperature: openai.Float(p.Temperature),
	}
	if p.MaxTokens > 0 {
		params.MaxTokens = openai.Int(int64(p.MaxTokens))
	}
	res, err := e.chat.New(callCtx, params)
	if err != nil {
		return Completion{}, classify(ctx, callCtx, e.timeout, err)
	}
	var c Completion
	if len(res.Choices) > 0 {
		c.Text = res.Choices[0].Message.Content
	}
	if res.JSON.Usage.Valid() {
		c.TokensIn, c.TokensOut = int(res.Usage.PromptTokens), int(res.Usage.CompletionTokens)
	} else {
		c.TokensIn = estimateTokens(countWords(p.System) + countWords(p.User))
		c.TokensOut = estimateTokens(countWords(c.Text))
		c.TokensEstimated = true
	}
	return c, nil
}
