// The names of a person's connections, for the lists that only carry a connection's id (runs,
// webhook log, notifications): GET /v1/connections a page of 100 at a time, never one per row.
import { useEffect, useState } from "preact/hooks";
import { html } from "../html.js";
import { getAll } from "../api.js";

/** The person's connections ({id, name, …}); [] until they arrive. */
export function useConnections() {
  const [connections, setConnections] = useState([]);
  useEffect(() => {
    let live = true;
    getAll("/v1/connections")
      .then((items) => live && setConnections(items))
      // Names are a courtesy: without them the rows still link to each connection.
      .catch(() => {});
    return () => {
      live = false;
    };
  }, []);
  return connections;
}

/** A link to the connection, by its name when known. */
export function ConnectionLink({ id, connections }) {
  if (!id) return "—";
  const found = connections.find((connection) => connection.id === id);
  return html`<a href=${`/connections/${id}`}>${found ? found.name : "Connection"}</a>`;
}
