-- Least-privilege PostgreSQL roles for iotmeter's metadata store (docs/security.md).
--
--   owner    owns the database and its tables: `iotmeter migrate` runs as it, at install and
--            at each upgrade, and nothing else does.
--   runtime  what the collector, the API and the dashboard use every day: reads and writes
--            rows, cannot create, alter or drop anything, cannot read other databases.
--
-- Run once as a superuser (psql substitutes the variables; passwords are never in the file):
--   psql "postgresql://postgres@db:5432/postgres" -v ON_ERROR_STOP=1 \
--        -v owner=iotmeter_owner -v runtime=iotmeter -v database=iotmeter \
--        -v owner_password="$OWNER_PASSWORD" -v runtime_password="$RUNTIME_PASSWORD" \
--        -f deploy/postgres/roles.sql
-- then:
--   IOTMETER_DB_URL=postgresql://iotmeter_owner:...@db/iotmeter?sslmode=verify-full iotmeter migrate
--   IOTMETER_DB_URL=postgresql://iotmeter:...@db/iotmeter?sslmode=verify-full   (everything else)

CREATE ROLE :"owner" LOGIN PASSWORD :'owner_password';
CREATE ROLE :"runtime" LOGIN PASSWORD :'runtime_password';
CREATE DATABASE :"database" OWNER :"owner";
REVOKE ALL ON DATABASE :"database" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"database" TO :"runtime";

\connect :"database"
-- PostgreSQL 15: the public schema belongs to the database owner and PUBLIC may not create
-- in it; say so anyway, so an upgraded cluster (where PUBLIC could) ends the same.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"runtime";
-- Tables and identity sequences the owner creates (now and in later migrations): rows only.
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"runtime";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO :"runtime";
-- Tables that exist already (roles added to an installed database).
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO :"runtime";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO :"runtime";
