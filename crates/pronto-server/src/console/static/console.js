// The console works without this script; it only says that an invoke is under way (a cold
// start can take seconds) and keeps the button from sending it twice.
document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("invoke-form");
  if (!form) return;
  form.addEventListener("submit", () => {
    const button = document.getElementById("invoke-button");
    button.disabled = true;
    button.textContent = "Invoking…";
  });
});
