// The names of a person's connections, for the lists that only carry a connection's id (runs,
// webhook log, notifications): one GET /v1/connections per page, never one per row.
import { useEffect, useState } from "preact/hooks";
import { html } from "../html.js";
import { get } from "../api.js";

/** [{id, name}] of the first 100 connections (the API's largest page); [] until they arrive. */
export function useConnections() {
  const [connections, setConnections] = useState([]);
  useEffect(() => {
    let live = true;
    get("/v1/connections?page_size=100")
      .then((page) => live && setConnections(page.items))
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
