package server

import (
	"context"
	"errors"
	"io"
	"net/http"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/kgents/kgents-go/apijson"
	agentesev1 "github.com/kgents/kgents-go/gen/kgents/agentese/v1"
	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
)

// Route templates of the SSE endpoints.
const (
	routeSendMessage    = "/v1/kgent/sessions/{session_id}/messages"
	routeStreamMessage  = "/v1/kgent/sessions/{session_id}/messages:stream"
	routeWatchSession   = "/v1/kgent/sessions/{session_id}/events"
	routeStreamDialogue = "/v1/soul/dialogue:stream"
	routeInvokeStream   = "/v1/agentese/invoke:stream"
)

// sseRoutes are the REST routes answered as Server-Sent Events.
func (s *Server) sseRoutes() []*sseRoute {
	return []*sseRoute{
		s.sseRoute(routeSendMessage),
		s.sseRoute(routeStreamMessage),
		s.sseRoute(routeWatchSession),
		s.sseRoute(routeStreamDialogue),
		s.sseRoute(routeInvokeStream),
	}
}

func (s *Server) sseRoute(route string) *sseRoute {
	sessions := sessionsv1.NewSessionsServiceClient(s.gwConn)
	switch route {
	case routeSendMessage, routeStreamMessage:
		required := bodyRequiredFor(sessionsv1.SessionsService_StreamMessage_FullMethodName)
		return &sseRoute{
			route: route, method: http.MethodPost,
			rpc:     sessionsv1.SessionsService_StreamMessage_FullMethodName,
			newReq:  func() proto.Message { return &sessionsv1.StreamMessageRequest{} },
			newResp: func() proto.Message { return &sessionsv1.StreamMessageResponse{} },
			read: func(r *http.Request, req proto.Message) error {
				if err := readBody(r, req, required); err != nil {
					return err
				}
				req.(*sessionsv1.StreamMessageRequest).SessionId = r.PathValue("session_id")
				return nil
			},
			open: func(ctx context.Context, req proto.Message) (grpc.ClientStream, error) {
				return sessions.StreamMessage(ctx, req.(*sessionsv1.StreamMessageRequest))
			},
		}
	case routeWatchSession:
		return &sseRoute{
			route: route, method: http.MethodGet,
			rpc:     sessionsv1.SessionsService_WatchSession_FullMethodName,
			newReq:  func() proto.Message { return &sessionsv1.WatchSessionRequest{} },
			newResp: func() proto.Message { return &sessionsv1.WatchSessionResponse{} },
			read: func(r *http.Request, req proto.Message) error {
				w := req.(*sessionsv1.WatchSessionRequest)
				w.SessionId = r.PathValue("session_id")
				// An EventSource reconnect sends Last-Event-ID, which is newer
				// than any ?after= left in the URL from the first connect.
				w.After = r.URL.Query().Get("after")
				if id := r.Header.Get("Last-Event-ID"); id != "" {
					w.After = id
				}
				return nil
			},
			open: func(ctx context.Context, req proto.Message) (grpc.ClientStream, error) {
				return sessions.WatchSession(ctx, req.(*sessionsv1.WatchSessionRequest))
			},
		}
	case routeStreamDialogue:
		soul := soulv1.NewSoulServiceClient(s.gwConn)
		required := bodyRequiredFor(soulv1.SoulService_StreamDialogue_FullMethodName)
		return &sseRoute{
			route: route, method: http.MethodPost,
			rpc:     soulv1.SoulService_StreamDialogue_FullMethodName,
			newReq:  func() proto.Message { return &soulv1.StreamDialogueRequest{} },
			newResp: func() proto.Message { return &soulv1.StreamDialogueResponse{} },
			read:    func(r *http.Request, req proto.Message) error { return readBody(r, req, required) },
			open: func(ctx context.Context, req proto.Message) (grpc.ClientStream, error) {
				return soul.StreamDialogue(ctx, req.(*soulv1.StreamDialogueRequest))
			},
		}
	case routeInvokeStream:
		agentese := agentesev1.NewAgenteseServiceClient(s.gwConn)
		required := bodyRequiredFor(agentesev1.AgenteseService_InvokeStream_FullMethodName)
		return &sseRoute{
			route: route, method: http.MethodPost,
			rpc:     agentesev1.AgenteseService_InvokeStream_FullMethodName,
			newReq:  func() proto.Message { return &agentesev1.InvokeStreamRequest{} },
			newResp: func() proto.Message { return &agentesev1.InvokeStreamResponse{} },
			read:    func(r *http.Request, req proto.Message) error { return readBody(r, req, required) },
			open: func(ctx context.Context, req proto.Message) (grpc.ClientStream, error) {
				return agentese.InvokeStream(ctx, req.(*agentesev1.InvokeStreamRequest))
			},
		}
	}
	panic("unknown SSE route " + route)
}

// readBody decodes a JSON body (possibly empty, unless fields are required)
// into req.
func readBody(r *http.Request, req proto.Message, required []protoreflect.Name) error {
	err := apijson.UnmarshalOptions{Required: required}.UnmarshalReader(r.Body, req)
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}
