// The AI Usage tab: consumption by feature, by member and per UTC day
// (Chart.js), with the balance and the projected days until depletion.
import { call, isRateLimited, orgPath, retryWhenAllowed } from './api.js';
import { $, showError } from './dom.js';
import { daysBefore, featureName, formatCredits, formatDay, formatShare, toUnits } from './format.js';

const countFormat = new Intl.NumberFormat();

export function createUsageView(session, walletView) {
  const org = session.org;
  let report = null;
  let chart = null;
  let loading = null;
  let cancelRetry = null; // a retry after 429 rate_limited, waiting

  function fieldInput(field) {
    return field === 'from' ? $('range-from') : field === 'to' ? $('range-to') : null;
  }

  async function load(range) {
    const query = new URLSearchParams();
    if (range?.from) query.set('from', range.from);
    if (range?.to) query.set('to', range.to);
    const path = `${orgPath(org, 'usage')}${query.size ? `?${query}` : ''}`;
    cancelRetry?.();
    cancelRetry = null;
    $('usage-error').hidden = true;
    for (const input of [$('range-from'), $('range-to')]) input.removeAttribute('aria-invalid');
    loading = call('GET', path);
    try {
      report = await loading;
      render();
    } catch (err) {
      const show = (text) => showError($('usage-error'), text);
      if (isRateLimited(err)) {
        // The same range again once the server allows it.
        cancelRetry = retryWhenAllowed(err, (text) => show(`Usage: ${text}`), () => {
          cancelRetry = null;
          if (!loading) load(range);
        });
        return;
      }
      const input = fieldInput(err.field);
      input?.setAttribute('aria-invalid', 'true');
      show(err.status === 422 ? `Check the dates: ${err.message}` : `Usage could not be loaded: ${err.message}`);
    } finally {
      loading = null;
    }
  }

  /** extra: more numeric cells after Calls, as (line) => text. */
  function renderTable(bodyId, lines, label, extra = []) {
    const body = $(bodyId);
    body.replaceChildren();
    if (!lines.length) {
      const row = body.insertRow();
      const td = row.insertCell();
      td.colSpan = 4 + extra.length;
      td.className = 'muted';
      td.textContent = 'No usage in this period.';
      return;
    }
    for (const line of lines) {
      const row = body.insertRow();
      const th = document.createElement('th');
      th.scope = 'row';
      th.textContent = label(line);
      row.append(th);
      for (const [text, cls] of [
        [formatCredits(line.credits), 'num'],
        [formatShare(line.credits, report.total), 'num'],
        [countFormat.format(line.count), 'num'],
        ...extra.map((cell) => [cell(line), 'num']),
      ]) {
        const td = row.insertCell();
        td.textContent = text;
        td.className = cls;
      }
    }
  }

  function renderChart() {
    const labels = report.daily.map((d) => formatDay(d.date));
    // Bar heights only: the chart needs numbers; the tooltips show the exact amounts.
    const values = report.daily.map((d) => Number(d.credits));
    const exact = report.daily.map((d) => formatCredits(d.credits));
    const peak = report.daily.reduce((best, d) => (toUnits(d.credits) > toUnits(best.credits) ? d : best), report.daily[0]);
    const peakText = peak && toUnits(peak.credits) > 0n
      ? `, highest on ${formatDay(peak.date, { dateStyle: 'medium' })} with ${formatCredits(peak.credits)} credits`
      : '';
    $('usage-chart').setAttribute('aria-label',
      `Daily consumption from ${report.from} to ${report.to} (UTC): ${formatCredits(report.total)} credits in total${peakText}.`);
    if (!window.Chart) {
      showError($('usage-error'), 'The chart library did not load; the daily figures are in the table below.');
      return;
    }
    const data = {
      labels,
      datasets: [{ label: 'Credits consumed', data: values, backgroundColor: '#3b49c7', borderRadius: 3, maxBarThickness: 28 }],
    };
    if (chart) {
      chart.data = data;
      chart.options.plugins.tooltip.callbacks.label = (ctx) => `${exact[ctx.dataIndex]} credits`;
      chart.update();
      return;
    }
    chart = new window.Chart($('usage-chart'), {
      type: 'bar',
      data,
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        plugins: {
          legend: { display: false },
          tooltip: { callbacks: { label: (ctx) => `${exact[ctx.dataIndex]} credits` } },
        },
        scales: {
          x: { grid: { display: false }, ticks: { maxRotation: 0, autoSkip: true, autoSkipPadding: 12, color: '#4f5b6e' } },
          y: { beginAtZero: true, ticks: { color: '#4f5b6e', precision: 0 }, title: { display: true, text: 'Credits', color: '#4f5b6e' } },
        },
      },
    });
  }

  /** "12.5 credits" with the unit set smaller. */
  function setCredits(el, amount) {
    const unit = document.createElement('span');
    unit.className = 'unit';
    unit.textContent = 'credits';
    el.replaceChildren(formatCredits(amount), ' ', unit);
  }

  function render() {
    $('range-from').value = report.from;
    $('range-to').value = report.to;
    $('range-to').max = report.today;
    setCredits($('usage-total'), report.total);
    $('usage-count').textContent = `${countFormat.format(report.count)} AI calls, ${formatDay(report.from, { dateStyle: 'medium' })} – ${formatDay(report.to, { dateStyle: 'medium' })}`;
    setCredits($('usage-balance'), report.balance);
    setCredits($('usage-avg'), report.avg_daily_7d);
    $('usage-avg-window').textContent = `Last 7 days (${formatDay(report.trailing_7d.from)} – ${formatDay(report.trailing_7d.to)} UTC, today so far included).`;
    const days = report.projected_days_until_depletion;
    $('usage-projection').textContent = days === null
      ? 'No recent usage'
      : days === 0
        ? 'Less than a day'
        : `${countFormat.format(days)} ${days === 1 ? 'day' : 'days'}`;
    renderChart();
    const daily = $('daily-body');
    daily.replaceChildren();
    for (const d of report.daily) {
      const row = daily.insertRow();
      row.insertCell().textContent = d.date;
      const td = row.insertCell();
      td.textContent = formatCredits(d.credits);
      td.className = 'num';
    }
    renderTable('by-feature-body', report.by_feature, (l) => featureName(l.feature));
    renderTable('by-member-body', report.by_member, (l) => l.user_id ?? 'No member (automated)');
    // Usage priced from tokens (SPEC §12); unbilled is what captures cost
    // beyond their holds, so underestimates show.
    renderTable('by-model-body', report.by_model ?? [], (l) => l.model, [
      (l) => countFormat.format(l.input_tokens),
      (l) => countFormat.format(l.output_tokens),
      (l) => formatCredits(l.unbilled),
    ]);
    $('by-member-note').textContent = 'Only the 1,000 largest consumers are listed; the totals include everyone.';
    $('by-member-note').hidden = !report.by_member_truncated;
  }

  $('range-form').addEventListener('submit', (event) => {
    event.preventDefault();
    load({ from: $('range-from').value, to: $('range-to').value });
  });
  for (const button of document.querySelectorAll('.presets button')) {
    button.addEventListener('click', () => {
      const today = report?.today;
      const days = Number(button.dataset.days);
      load(today ? { from: daysBefore(today, days - 1), to: today } : undefined);
    });
  }
  // A purchase changes the balance and so the projection.
  walletView.onCredited(() => report && load({ from: report.from, to: report.to }));

  return {
    show() {
      if (!loading) load(report ? { from: report.from, to: report.to } : undefined);
    },
  };
}
