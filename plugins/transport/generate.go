package transport

// The generated code in proto/ is committed so that building the project
// needs neither protoc nor its Go plugins; rerun this (with protoc,
// protoc-gen-go and protoc-gen-go-grpc on PATH, e.g. ~/go/bin) after editing
// proto/transport.proto.
//go:generate protoc --proto_path=proto --go_out=proto --go_opt=paths=source_relative --go-grpc_out=proto --go-grpc_opt=paths=source_relative transport.proto
