-- Each service owns its database (DESIGN.md); POSTGRES_DB creates identity.
CREATE DATABASE vault;
CREATE DATABASE runner;
CREATE DATABASE retention;
