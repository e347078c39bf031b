// The steps of a run page as one component fed a list: a sticky navigator (an overview strip that
// fits any run on two lines, labelled pills, jumps, counts) and the step cards in a virtual-scroll
// list. Card bodies are NiceGUI elements made by the server for open cards only; they arrive as
// children of this element (each with a `data-step` prop) and are placed into their card here.
//
// A row: [key, label, status, colour, flag, attempt, started (epoch s), finished (epoch s)].
const KEY = 0, LABEL = 1, STATUS = 2, COLOR = 3, FLAG = 4, ATTEMPT = 5, STARTED = 6, FINISHED = 7;
const ATTENTION = new Set(["failed", "waiting"]);

const VNode = { props: { vnode: Object }, render() { return this.vnode; } };

export default {
  components: { VNode },
  template: `
  <div class="run-steps w-full" :data-total="rows.length">
    <div class="run-steps-nav sticky z-20 w-full rounded-md shadow-sm px-2 py-1"
         :style="{top: top + 'px'}" data-testid="step-nav">
      <div class="row items-center gap-1 w-full">
        <q-btn flat dense no-caps size="sm" icon="unfold_more" label="Expand all" @click="expandAll" data-testid="expand-all"/>
        <q-btn flat dense no-caps size="sm" icon="unfold_less" label="Collapse all" @click="collapseAll" data-testid="collapse-all"/>
        <q-separator vertical/>
        <q-btn v-for="w in nexts" :key="w[0]" flat dense round size="sm" :icon="w[1]" @click="next(w[0])"
               :title="'Next ' + w[0] + ' step'" :data-testid="'next-' + w[0]"/>
        <q-btn flat dense round size="sm" icon="keyboard" title="Keys (?)" @click="help = true"/>
        <span class="text-xs text-grey-7 whitespace-nowrap" data-testid="step-counts">{{ countsText }}</span>
      </div>
      <canvas ref="strip" class="run-steps-strip w-full block cursor-pointer my-1" :height="stripHeight"
              @click="stripClick" @mousemove="stripHover" data-testid="overview" :data-cells="rows.length"
              :title="hoverLabel"></canvas>
      <q-virtual-scroll ref="pills" virtual-scroll-horizontal :items="rows" :virtual-scroll-item-size="96"
                        class="run-steps-pills w-full" @wheel="pillWheel"
                        v-slot="{ item, index }" data-testid="pills">
        <button :key="item[0]" type="button" class="run-pill rounded-full px-2 shrink-0 text-xs"
                :class="{'run-pill-current': item[0] === current}" :title="item[1]" :data-testid="'pill-' + item[0]"
                :data-status="item[2]" @click="jump(item[0])">
          <q-icon :name="iconOf(item)" :class="'text-' + item[3]" size="15px" class="q-mr-xs"/>{{ short(item[1]) }}
        </button>
      </q-virtual-scroll>
    </div>
    <q-virtual-scroll ref="list" scroll-target="body" :items="rows" :virtual-scroll-item-size="46" :virtual-scroll-slice-size="12"
                      :virtual-scroll-sticky-size-start="stickyStart" @virtual-scroll="onScroll"
                      v-slot="{ item, index }" class="run-steps-list w-full" data-testid="step-cards">
      <div :key="item[0]" class="run-card-slot pb-2 w-full">
      <div class="run-card rounded-md w-full" :id="'step-' + item[0]"
           :data-testid="'card-' + item[0]" :data-status="item[2]" :data-open="isOpen(item[0]) ? 'true' : 'false'">
        <div class="run-card-header row items-center no-wrap gap-2 px-3 py-2 cursor-pointer"
             @click="toggle(item[0])" :data-testid="'card-header-' + item[0]">
          <q-icon :name="iconOf(item)" :class="'text-' + item[3]" size="18px"/>
          <span class="font-medium run-card-label" :title="item[0]">{{ item[1] }}</span>
          <span class="q-badge flex inline items-center no-wrap q-badge--single-line text-white"
                :class="'bg-' + item[3]" :data-testid="'status-' + item[0]">{{ item[2] }}</span>
          <span v-if="item[4]" class="q-badge flex inline items-center no-wrap q-badge--single-line text-white"
                :class="'bg-' + (item[4].startsWith('stale') ? flagColors['stale'] : flagColors['cut off'])"
                :data-testid="'flag-' + item[0]">{{ item[4] }}</span>
          <span class="ml-auto text-xs text-grey-7 whitespace-nowrap">{{ meta(item) }}</span>
          <q-icon :name="isOpen(item[0]) ? 'expand_less' : 'expand_more'" size="20px" class="text-grey-7"/>
        </div>
        <div v-if="isOpen(item[0])" class="run-card-body px-3 pb-3">
          <v-node v-if="bodyOf(item[0])" :vnode="bodyOf(item[0])"/>
          <div v-else class="text-grey-6 text-sm py-2">Loading…</div>
        </div>
      </div>
      </div>
    </q-virtual-scroll>
    <q-dialog v-model="help">
      <q-card class="p-4" data-testid="keys-help">
        <div class="text-h6 mb-2">Keys</div>
        <div v-for="k in keys" :key="k[0]" class="row gap-4"><b class="w-8">{{ k[0] }}</b><span>{{ k[1] }}</span></div>
      </q-card>
    </q-dialog>
  </div>`,
  props: {
    steps: Array,
    colors: Object,
    icons: Object,
    flagColors: Object,
    top: { type: Number, default: 52 },
    initial: { type: String, default: "" },
    opened: { type: Array, default: () => [] },
    streaming: { type: Array, default: () => [] },  // steps whose text streams while they run (LLM)
  },
  data() {
    return {
      rows: this.steps ? [...this.steps] : [],
      open: Object.fromEntries(this.opened.map((k) => [k, true])),
      current: this.initial || "",
      help: false,
      bodiesVersion: 0,
      now: Date.now() / 1000,
      width: 0,
      hoverLabel: "",
      stickyStart: 0,
      nexts: [["failed", "error"], ["waiting", "front_hand"], ["stale", "history"]],
      keys: [["j", "next step"], ["k", "previous step"], ["n", "next step that needs attention"],
             ["o", "open or close the current step"], ["?", "these keys"]],
    };
  },
  computed: {
    // Computed from the raw rows: through Vue's proxies every read of a cell costs a dependency check,
    // and a long run's page reads them all many times a second while it runs.
    index() { return new Map(Vue.toRaw(this.rows).map((r, i) => [r[KEY], i])); },
    streams() { return new Set(this.streaming); },
    countsText() {
      const counts = {};
      let stale = 0;
      for (const r of Vue.toRaw(this.rows)) {
        counts[r[STATUS]] = (counts[r[STATUS]] || 0) + 1;
        if (r[FLAG].startsWith("stale")) stale++;
      }
      const parts = Object.keys(counts).sort().map((s) => counts[s] + " " + s);
      if (stale) parts.push(stale + " stale");
      return parts.join(", ");
    },
    stripLines() { return this.rows.length > 60 ? 2 : 1; },
    stripHeight() { return this.stripLines * 10; },
  },
  watch: {
    steps(value) { if (value) { this.rows = [...value]; } },
    rows() { this.redraw(); },
    current() { this.redraw(); },
  },
  mounted() {
    this.resize = new ResizeObserver(() => { this.width = this.$refs.strip?.clientWidth || 0; this.redraw(); this.measure(); });
    this.resize.observe(this.$el);
    this.onKey = (e) => this.key(e);
    document.addEventListener("keydown", this.onKey);
    this.timer = setInterval(() => { if (Vue.toRaw(this.rows).some((r) => r[STATUS] === "running")) this.now = Date.now() / 1000; }, 1000);
    // The virtual list renders cards on its own schedule: look at which open cards it shows.
    this.watcher = setInterval(() => this.announce(), 250);
    // The overview's marker is drawn in a colour for the page's background (the body's class is set
    // again on many updates: redraw only when the page turned dark or light).
    this.dark = document.body.classList.contains("body--dark");
    this.theme = new MutationObserver(() => {
      const dark = document.body.classList.contains("body--dark");
      if (dark !== this.dark) { this.dark = dark; this.redraw(); }
    });
    this.theme.observe(document.body, { attributes: true, attributeFilter: ["class"] });
    this.$nextTick(() => {
      this.measure();
      this.draw();
      this.announce();
      // The list gets the navigator's height (its sticky offset) with the next render: jump after it.
      if (this.initial) this.$nextTick(() => this.jump(this.initial));
    });
  },
  beforeUpdate() {
    this.bodiesVersion++;
  },
  updated() {
    this.announce();
    if (this.settle && this.bodyOf(this.settle)) {
      const i = this.index.get(this.settle);
      this.settle = null;
      this.$nextTick(() => this.$refs.list?.scrollTo(i, "start-force"));
    }
  },
  unmounted() {
    this.resize?.disconnect();
    document.removeEventListener("keydown", this.onKey);
    clearInterval(this.timer);
    clearInterval(this.watcher);
    this.theme?.disconnect();
    cancelAnimationFrame(this.drawing);
  },
  methods: {
    // The icon that goes with a row's colour: its flag's (cut off, stale), else its status's.
    iconOf(row) {
      const flag = row[FLAG] || "";
      if (flag.includes("cut off")) return this.icons.truncated;
      if (flag.includes("stale")) return this.icons.stale;
      return this.icons[row[STATUS]] || "circle";
    },
    // --- from the server ---
    patch(rows) {
      const index = this.index;
      const copy = [...this.rows];
      for (const row of rows) {
        const i = index.get(row[KEY]);
        if (i === undefined) continue;
        const before = copy[i][STATUS];
        copy[i] = row;
        if (before !== row[STATUS] && ATTENTION.has(row[STATUS])) this.open[row[KEY]] = true;
        // A model starting to write: open its card so the text shows as it streams.
        if (before !== row[STATUS] && row[STATUS] === "running" && this.streams.has(row[KEY])) this.open[row[KEY]] = true;
      }
      this.rows = copy;
      this.announce();
    },
    reset(rows) { this.rows = [...rows]; this.announce(); },
    // --- cards ---
    isOpen(key) { return !!this.open[key]; },
    toggle(key) { this.setOpen(key, !this.open[key]); this.current = key; this.remember(key); },
    setOpen(key, value) {
      if (value) this.open[key] = true; else delete this.open[key];
      this.announce();
    },
    expandAll() { for (const r of this.rows) this.open[r[KEY]] = true; this.announce(); },
    collapseAll() { this.open = {}; this.announce(); },
    bodyOf(key) {
      // Read a counter the parent's updates bump: the virtual list's items then re-render when the
      // bodies (this element's children) change, though its own inputs did not.
      void this.bodiesVersion;
      const children = this.$slots.default ? this.$slots.default() : [];
      return children.find((v) => v && v.props && v.props["data-step"] === key) || null;
    },
    onScroll() {
      this.follow();
      this.announce();
    },
    // When a person scrolls the current card off screen, the first card in view becomes current.
    follow() {
      const top = this.stickyStart, bottom = window.innerHeight;
      const seen = (el) => { const r = el.getBoundingClientRect(); return r.bottom > top + 1 && r.top < bottom; };
      const cards = [...this.$el.querySelectorAll(".run-card")];
      const shown = cards.find((el) => el.id === "step-" + this.current);
      if (shown && seen(shown)) return;
      const first = cards.find(seen);
      if (!first || first.id === "step-" + this.current) return;
      this.current = first.id.slice(5);
      const i = this.index.get(this.current);
      if (i !== undefined) this.$refs.pills?.scrollTo(i, "center");
    },
    // Tell the server which open cards are on screen (their bodies are built; others are dropped).
    announce() {
      clearTimeout(this.announcing);
      this.announcing = setTimeout(() => {
        // The open cards the virtual list has rendered (on screen, plus its small margin).
        const shown = [...this.$el.querySelectorAll('.run-card[data-open="true"]')].map((el) => el.id.slice(5));
        const wanted = shown.join("\n");
        if (wanted !== this.lastWanted) {
          this.lastWanted = wanted;
          this.$emit("bodies", shown);
        }
        this.$el.dataset.open = Object.keys(this.open).length;
      }, 60);
    },
    // --- jumps ---
    jump(key, open = true) {
      const i = this.index.get(key);
      if (i === undefined) return;
      this.current = key;
      if (open) this.open[key] = true;
      this.remember(key);
      this.$refs.list?.scrollTo(i, "start-force");
      this.$refs.pills?.scrollTo(i, "center-force");
      // Once its body arrives the card grows: scroll again then, so it starts below the navigator.
      this.settle = open ? key : null;
      this.announce();
    },
    remember(key) {
      const url = new URL(window.location.href);
      url.searchParams.set("step", key);
      window.history.replaceState(window.history.state, "", url);
    },
    matches(row, what) {
      if (what === "stale") return row[FLAG].startsWith("stale");
      if (what === "attention") return ATTENTION.has(row[STATUS]) || row[FLAG] !== "";
      return row[STATUS] === what;
    },
    next(what) {
      const start = this.index.get(this.current) ?? -1;
      for (let d = 1; d <= this.rows.length; d++) {
        const row = this.rows[(start + d) % this.rows.length];
        if (this.matches(row, what)) { this.jump(row[KEY]); return; }
      }
      this.$q.notify({ message: "No " + what + " step", type: "info" });
    },
    step(delta) {
      const i = this.index.get(this.current);
      const next = i === undefined ? 0 : Math.max(0, Math.min(this.rows.length - 1, i + delta));
      if (this.rows[next]) this.jump(this.rows[next][KEY], false);
    },
    key(e) {
      if (e.ctrlKey || e.metaKey || e.altKey) return;
      const target = e.target;
      if (target && (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName))) return;
      if (e.key === "j") this.step(1);
      else if (e.key === "k") this.step(-1);
      else if (e.key === "n") this.next("attention");
      else if (e.key === "o" && this.current) this.toggle(this.current);
      else if (e.key === "?") this.help = !this.help;
      else return;
      e.preventDefault();
    },
    // --- the overview strip ---
    measure() {
      const nav = this.$el.querySelector(".run-steps-nav");
      this.stickyStart = (nav ? nav.offsetHeight : 0) + this.top;
    },
    cellAt(x, y) {
      const perLine = Math.ceil(this.rows.length / this.stripLines);
      const line = Math.min(this.stripLines - 1, Math.floor(y / 10));
      const i = line * perLine + Math.floor((x / Math.max(1, this.width)) * perLine);
      return Math.min(this.rows.length - 1, Math.max(0, i));
    },
    stripClick(e) { const row = this.rows[this.cellAt(e.offsetX, e.offsetY)]; if (row) this.jump(row[KEY]); },
    stripHover(e) { const row = this.rows[this.cellAt(e.offsetX, e.offsetY)]; this.hoverLabel = row ? row[LABEL] + " — " + row[STATUS] : ""; },
    // Draw the strip once in the next frame, however many changes came before it.
    redraw() {
      if (this.drawing) return;
      this.drawing = requestAnimationFrame(() => { this.drawing = 0; this.draw(); });
    },
    draw() {
      const canvas = this.$refs.strip;
      const rows = Vue.toRaw(this.rows), colors = Vue.toRaw(this.colors);
      if (!canvas || !rows.length) return;
      // The width the resize observer saw: reading the canvas's own would lay the page out again.
      const width = this.width || canvas.clientWidth;
      if (!width) return;
      if (canvas.width !== width) canvas.width = width;
      const ctx = canvas.getContext("2d");
      ctx.clearRect(0, 0, width, canvas.height);
      const perLine = Math.ceil(rows.length / this.stripLines);
      const w = width / perLine;
      const gap = w >= 4 ? 1 : 0;
      // One path and one fill per colour: a fill per cell costs a long run's page milliseconds a draw.
      const paths = new Map();
      rows.forEach((row, i) => {
        const color = colors[row[COLOR]] || "#9e9e9e";
        let path = paths.get(color);
        if (!path) paths.set(color, (path = new Path2D()));
        const line = Math.floor(i / perLine), col = i % perLine;
        path.rect(col * w, line * 10 + 1, Math.max(1, w - gap), 8);
      });
      for (const [color, path] of paths) {
        ctx.fillStyle = color;
        ctx.fill(path);
      }
      const i = this.index.get(this.current);
      if (i !== undefined) {
        const line = Math.floor(i / perLine), col = i % perLine;
        ctx.strokeStyle = document.body.classList.contains("body--dark") ? "#fff" : "#111";
        ctx.lineWidth = 2;
        ctx.strokeRect(col * w, line * 10, Math.max(3, w), 10);
      }
    },
    // --- small things ---
    short(label) { return label.length <= 12 ? label : label.slice(0, 11) + "…"; },
    meta(row) {
      const parts = row[ATTEMPT] ? ["attempt " + row[ATTEMPT]] : [];
      if (row[STARTED] && row[STATUS] !== "pending" && row[STATUS] !== "not run") {
        const end = row[FINISHED] || (row[STATUS] === "running" ? this.now : row[STARTED]);
        const s = Math.max(0, end - row[STARTED]);
        parts.push(s < 120 ? s.toFixed(1) + " s" : (s / 60).toFixed(1) + " min");
      }
      return parts.join(" · ");
    },
    pillWheel(e) {
      const el = this.$refs.pills?.$el;
      if (!el || Math.abs(e.deltaY) <= Math.abs(e.deltaX) || el.scrollWidth <= el.clientWidth) return;
      el.scrollLeft += e.deltaY;
      e.preventDefault();
    },
  },
};
