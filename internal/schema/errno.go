package schema

import (
	"errors"

	"github.com/go-sql-driver/mysql"
)

func errorNumber(err error) uint16 {
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		return me.Number
	}
	return 0
}
