package schema

import (
	"errors"

	"github.com/go-sql-driver/mysql"
)

// errDupKeyName is MySQL's ER_DUP_KEYNAME: the index already exists.
const errDupKeyName = 1061

// errDupColumn is MySQL's ER_DUP_FIELDNAME: the column already exists.
const errDupColumn = 1060

func errorNumber(err error) uint16 {
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		return me.Number
	}
	return 0
}
