// Runs once, when the mongo container initialises an empty data volume
// (/docker-entrypoint-initdb.d). The service connects as this least-privilege user, never
// as root: readWrite on its own database covers inserts, lookups, indexes and creating and
// dropping its version collections.
const app = db.getSiblingDB("vervedb");
app.createUser({
  user: "promotions",
  pwd: process.env.MONGO_APP_PASSWORD,
  roles: [{ role: "readWrite", db: "vervedb" }],
});
