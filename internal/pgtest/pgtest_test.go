package pgtest_test

import (
	"context"
	"testing"

	"github.com/valet-dev/valet/internal/pgtest"
)

// TestPasswordIsChecked: the superuser gets in with its password and not
// with a wrong one, so a login in other tests proves something.
func TestPasswordIsChecked(t *testing.T) {
	pg := pgtest.Start(t)
	ctx := context.Background()
	if err := pg.Login(ctx, pgtest.SuperUser, pg.Password()); err != nil {
		t.Fatalf("login with the right password: %v", err)
	}
	if err := pg.Login(ctx, pgtest.SuperUser, "wrong-"+pg.Password()); err == nil {
		t.Fatal("login with a wrong password succeeded: the cluster does not check passwords")
	}
	if err := pg.Login(ctx, "nobody", "x"); err == nil {
		t.Fatal("login as an unknown role succeeded")
	}
	ok, err := pg.RoleExists(ctx, pgtest.SuperUser)
	if err != nil || !ok {
		t.Fatalf("RoleExists(postgres) = %v, %v", ok, err)
	}
	if ok, err := pg.RoleExists(ctx, "nobody"); err != nil || ok {
		t.Fatalf("RoleExists(nobody) = %v, %v", ok, err)
	}
}
