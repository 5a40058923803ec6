package media

import (
	"database/sql"
	"log/slog"

	"github.com/multiconnect/multiconnect/plugins/transport"
)

// Deps is what the media store needs from the process.
type Deps struct {
	DB  *sql.DB
	Log *slog.Logger
	// Plugins fetches inbound media from the network and tells it about
	// deleted uploads.
	Plugins *transport.Supervisor
	// DBError counts and logs a failed database operation.
	DBError func(op string, err error)
}
