-- renew_statements of the database role "readonly" (docs/vault.md): a
-- renewal, by anyone, never moves the role's VALID UNTIL, which stays the
-- bound set at creation. (Task tokens cannot renew at all.)
SELECT 1;
