// Package proto holds the gRPC contract between a coreapp and its transport
// plugin: transport.proto and the code generated from it (see the
// generate directive in the parent package). Only plugins/transport should
// import it; coreapps and plugins program against transport.Transport.
package proto
