package server

import (
	"context"
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/kgents/kgents-go/apijson"
	"github.com/kgents/kgents-go/interceptors"
)

// sseRoute serves one server-streaming RPC as Server-Sent Events.
//
// grpc-gateway streams newline-delimited JSON and cannot send heartbeats, so
// SSE routes are served here instead, over the same in-process gRPC client
// (so the same interceptors run). A stream "opens" when the gRPC server
// sends its response headers, which the services do only after every check
// (auth, quota, validation, lookup) has passed: until then a failure is an
// ordinary JSON error with its status code; from then on the response is a
// 200 event stream that starts with a heartbeat comment (so proxies flush the
// headers) and carries one frame per message:
//
//	id: <id>
//	event: <name of the oneof field that is set>
//	data: <that field as API JSON>
type sseRoute struct {
	route  string // route template, for metrics, logs and metadata
	method string // HTTP method
	rpc    string // full gRPC method name
	// read fills the request from the HTTP request (path, query, body).
	read func(r *http.Request, req proto.Message) error
	// newReq and newResp make empty messages.
	newReq, newResp func() proto.Message
	// open starts the gRPC stream.
	open func(ctx context.Context, req proto.Message) (grpc.ClientStream, error)
}

// writeTimeout bounds each write to a client, so a stalled client cannot pin
// a handler; a client that cannot take a frame in this time is dropped.
const sseWriteTimeout = 30 * time.Second

func (s *Server) serveSSE(rt *sseRoute) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if st := callStateFrom(r.Context()); st != nil {
			st.setRoute(rt.route)
		}
		if r.Method != rt.method {
			w.Header().Set("Allow", rt.method)
			writeJSONError(w, http.StatusMethodNotAllowed, codes.Unimplemented, "Method Not Allowed")
			return
		}
		ctx, err := runtime.AnnotateContext(r.Context(), s.gwMux, r, rt.rpc, runtime.WithHTTPPathPattern(rt.route))
		if err != nil {
			s.writePreCallError(r.Context(), w, r, "", err)
			return
		}
		// A request that cannot be read is refused through the chain (see
		// writePreCallError); a string from the URL that is not UTF-8 is
		// found before the call could fail to encode it.
		req := rt.newReq()
		err = rt.read(r, req)
		if st := callStateFrom(r.Context()); err == nil && st != nil && st.badURL {
			err = checkUTF8(req)
		}
		if err != nil {
			s.writePreCallError(ctx, w, r, rt.rpc, err)
			return
		}
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()

		stream, err := rt.open(ctx, req)
		if err != nil {
			writeError(w, status.Convert(err), requestIDOf(r))
			return
		}
		// The stream is open once the server says so in its headers, or
		// sends a first message; an error before either is a plain error.
		md, _ := stream.Header()
		var first proto.Message
		if len(md.Get(interceptors.MDStreamOpen)) == 0 {
			first = rt.newResp()
			if err := stream.RecvMsg(first); err != nil {
				copyMetadataHeaders(w.Header(), md, stream.Trailer())
				if errors.Is(err, io.EOF) {
					err = status.Error(codes.Internal, "stream ended before it opened")
				}
				writeError(w, status.Convert(err), requestIDOf(r))
				return
			}
		}

		h := w.Header()
		copyMetadataHeaders(h, md)
		h.Set("Content-Type", "text/event-stream")
		h.Set("Cache-Control", "no-cache")
		h.Set("X-Accel-Buffering", "no")
		h.Set("Connection", "keep-alive")
		w.WriteHeader(http.StatusOK)
		out := &sseWriter{w: w, rc: http.NewResponseController(w)}
		if out.comment("ping") != nil {
			return
		}
		if first != nil && out.frame(first) != nil {
			return
		}

		msgs := make(chan proto.Message, 16)
		recvErr := make(chan error, 1)
		go func() {
			for {
				m := rt.newResp()
				if err := stream.RecvMsg(m); err != nil {
					recvErr <- err
					return
				}
				select {
				case msgs <- m:
				case <-ctx.Done():
					recvErr <- ctx.Err()
					return
				}
			}
		}()

		heartbeat := time.NewTicker(s.cfg.HTTP.SSEHeartbeat)
		defer heartbeat.Stop()
		for {
			select {
			case m := <-msgs:
				if out.frame(m) != nil {
					return
				}
			case <-heartbeat.C:
				if out.comment("ping") != nil {
					return
				}
			case err := <-recvErr:
				// Deliver what was received before the stream ended.
				for {
					select {
					case m := <-msgs:
						if out.frame(m) != nil {
							return
						}
						continue
					default:
					}
					break
				}
				if err != nil && !errors.Is(err, io.EOF) && r.Context().Err() == nil {
					// The stream broke after it opened (the server went away):
					// say so in-band, the status line is already sent.
					st := status.Convert(err)
					_ = out.errorEvent(st.Message(), apijson.CodeName(st.Code()))
				}
				return
			case <-r.Context().Done():
				return
			}
		}
	})
}

// sseWriter writes frames and flushes each one.
type sseWriter struct {
	w   http.ResponseWriter
	rc  *http.ResponseController
	buf []byte
}

func (o *sseWriter) write(b []byte) error {
	_ = o.rc.SetWriteDeadline(time.Now().Add(sseWriteTimeout))
	if _, err := o.w.Write(b); err != nil {
		return err
	}
	return o.rc.Flush()
}

func (o *sseWriter) comment(text string) error {
	o.buf = append(o.buf[:0], ": "...)
	o.buf = append(o.buf, text...)
	o.buf = append(o.buf, '\n', '\n')
	return o.write(o.buf)
}

func (o *sseWriter) frame(m proto.Message) error {
	o.buf = appendSSEFrame(o.buf[:0], m)
	return o.write(o.buf)
}

func (o *sseWriter) errorEvent(msg, typ string) error {
	o.buf = append(o.buf[:0], "event: error\ndata: "...)
	o.buf = apijson.AppendMessage(o.buf, errorEventPayload(msg, typ))
	o.buf = append(o.buf, '\n', '\n')
	return o.write(o.buf)
}

// appendSSEFrame renders one stream message as an SSE frame. A message whose
// only content is an `event` message field (StreamMessageResponse) is
// unwrapped; the frame's id is the string field `id`, its event name the
// set member of the message's oneof, its data that member as API JSON.
func appendSSEFrame(b []byte, msg proto.Message) []byte {
	m := msg.ProtoReflect()
	fields := m.Descriptor().Fields()
	if fd := fields.ByName("event"); fd != nil && fd.Message() != nil && fd.ContainingOneof() == nil {
		m = m.Get(fd).Message()
		fields = m.Descriptor().Fields()
	}
	if fd := fields.ByName("id"); fd != nil && fd.Kind() == protoreflect.StringKind {
		if id := m.Get(fd).String(); id != "" {
			b = append(b, "id: "...)
			b = append(b, id...)
			b = append(b, '\n')
		}
	}
	name, payload := "message", protoreflect.Message(nil)
	oneofs := m.Descriptor().Oneofs()
	for i := 0; i < oneofs.Len(); i++ {
		od := oneofs.Get(i)
		if od.IsSynthetic() {
			continue
		}
		if fd := m.WhichOneof(od); fd != nil {
			name = string(fd.Name())
			if fd.Message() != nil {
				payload = m.Get(fd).Message()
			}
			break
		}
	}
	b = append(b, "event: "...)
	b = append(b, name...)
	b = append(b, "\ndata: "...)
	if payload != nil {
		b = apijson.AppendMessage(b, payload.Interface())
	} else {
		b = append(b, "{}"...)
	}
	return append(b, '\n', '\n')
}
