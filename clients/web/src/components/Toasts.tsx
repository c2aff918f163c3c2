import { useStore } from "../store";

export function Toasts() {
  const store = useStore();
  return (
    <div className="toasts" aria-live="assertive">
      {store.toasts.map((t) => (
        <div key={t.id} className={`toast ${t.kind}`} role={t.kind === "error" ? "alert" : "status"}>
          <span>{t.text}</span>
          <button className="icon" aria-label="Dismiss" onClick={() => store.dismiss(t.id)}>
            ×
          </button>
        </div>
      ))}
    </div>
  );
}
